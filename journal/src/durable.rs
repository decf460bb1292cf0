//! Power-loss durability for a store's folder: after the engine's flush, [`DurableDir::sync`]
//! makes the files it wrote durable with `fdatasync` and the folders whose entries changed with
//! `fsync`. sled 0.34's own flush is a `sync_file_range`, which flushes neither the disk's write
//! cache nor the file's metadata, and it never syncs its blob files (values over its blob
//! threshold); without this a power failure loses what a flush "made durable"
//! (docs/journal.md#the-journal, Durability).
//!
//! The one helper for both sled stores (the journal and the control plane's store): call it once
//! per group commit, after the flush. It knows files and folders only, never the engine's format:
//! files directly in the folder (the log, its config and snapshots: a handful) are synced every
//! time; files in subfolders (sled's blobs, written once) when they are new or their length
//! changed; a folder when a file in it appeared or went away. It must never write or remove a file.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// What the last sync saw: the length of every file in a subfolder, and the names in each folder.
#[derive(Debug, Default)]
struct Seen {
    sub_files: HashMap<PathBuf, u64>,
    entries: HashMap<PathBuf, HashSet<PathBuf>>,
}

/// The folder of one store, made durable after each flush.
#[derive(Debug)]
pub struct DurableDir {
    dir: PathBuf,
    seen: Mutex<Seen>,
    /// Calls of [`DurableDir::sync`] so far, and how many of them a finished sync covered: a
    /// sync that starts after a call began covers it, so concurrent callers share one.
    requested: AtomicU64,
    covered: AtomicU64,
}

impl DurableDir {
    /// Makes the folder's own entry durable in its parent (it was just created or opened) and
    /// starts tracking it.
    pub fn open(dir: &Path) -> io::Result<Self> {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            sync_folder(parent)?;
        }
        let durable = Self {
            dir: dir.to_path_buf(),
            seen: Mutex::new(Seen::default()),
            requested: AtomicU64::new(0),
            covered: AtomicU64::new(0),
        };
        durable.sync()?;
        Ok(durable)
    }

    /// Makes everything written to the folder so far durable. Concurrent calls share the work:
    /// one that finds its writes covered by a sync that started after it was called returns at
    /// once (group commit for stores without their own, like the control plane's).
    pub fn sync(&self) -> io::Result<()> {
        let ticket = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if self.covered.load(Ordering::SeqCst) >= ticket {
            return Ok(());
        }
        let covers = self.requested.load(Ordering::SeqCst);
        self.sync_all(&mut seen)?;
        self.covered.fetch_max(covers, Ordering::SeqCst);
        Ok(())
    }

    fn sync_all(&self, seen: &mut Seen) -> io::Result<()> {
        let mut top_files = Vec::new();
        let mut folders = Vec::new();
        let mut top_names = HashSet::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            top_names.insert(entry.path());
            if kind.is_dir() {
                folders.push(entry.path());
            } else if kind.is_file() {
                top_files.push(entry.path());
            }
        }
        // Written-once files first, so that no synced log points at a blob that is not.
        let mut listed = Vec::with_capacity(folders.len() + 1);
        for folder in folders {
            let names = sync_sub_files(seen, &folder)?;
            listed.push((folder, names));
        }
        for file in &top_files {
            sync_file(file)?;
        }
        listed.push((self.dir.clone(), top_names));
        for (folder, names) in listed {
            sync_folder_if_changed(seen, folder, names)?;
        }
        Ok(())
    }
}

/// Syncs the files of `folder` that are new or grew since the last sync; returns what the folder
/// holds (one listing serves the files and the folder's own check).
fn sync_sub_files(seen: &mut Seen, folder: &Path) -> io::Result<HashSet<PathBuf>> {
    let mut names = HashSet::new();
    for entry in std::fs::read_dir(folder)? {
        let entry = entry?;
        let path = entry.path();
        names.insert(path.clone());
        let meta = match entry.metadata() {
            Ok(m) if m.is_file() => m,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue, // removed meanwhile
            Err(e) => return Err(e),
        };
        if seen.sub_files.get(&path) != Some(&meta.len()) {
            match sync_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => other?,
            }
            seen.sub_files.insert(path, meta.len());
        }
    }
    seen.sub_files
        .retain(|p, _| p.parent() != Some(folder) || names.contains(p));
    Ok(names)
}

/// `fsync` of `folder` when its names differ from the last sync's.
fn sync_folder_if_changed(
    seen: &mut Seen,
    folder: PathBuf,
    names: HashSet<PathBuf>,
) -> io::Result<()> {
    if seen.entries.get(&folder) != Some(&names) {
        sync_folder(&folder)?;
        seen.entries.insert(folder, names);
    }
    Ok(())
}

/// `fdatasync` of one file: its data and the metadata needed to read it back (its length).
fn sync_file(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_data()
}

/// `fsync` of a folder: the names created, renamed or removed in it.
fn sync_folder(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syncs_new_and_grown_files_and_shares_concurrent_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("store");
        std::fs::create_dir_all(store.join("blobs")).unwrap();
        std::fs::write(store.join("db"), b"log").unwrap();
        let durable = std::sync::Arc::new(DurableDir::open(&store).unwrap());
        std::fs::write(store.join("blobs/1"), b"blob").unwrap();
        durable.sync().unwrap();
        let blob = store.join("blobs/1");
        assert_eq!(lock_seen(&durable).sub_files.get(&blob), Some(&4));
        std::fs::remove_file(&blob).unwrap();
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let durable = durable.clone();
                std::thread::spawn(move || durable.sync().unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(lock_seen(&durable).sub_files.is_empty());
        assert_eq!(durable.covered.load(Ordering::SeqCst), 10);
    }

    fn lock_seen(d: &DurableDir) -> std::sync::MutexGuard<'_, Seen> {
        d.seen.lock().unwrap()
    }
}
