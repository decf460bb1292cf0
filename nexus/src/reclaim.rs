//! Giving the disk back: sled 0.34 reuses the space of removed records but does not shrink its
//! files (measured: a store of 3,000 finished 1 KB jobs kept its 2.6 MB after retention removed
//! every job). At start, before the store opens, [`reclaim`] copies a store that takes much more
//! room than its live records into a fresh folder and swaps it in, so the space retention freed
//! is returned. It owns only that copy and its crash-safe swap; it must never change a record.

use std::io;
use std::path::{Path, PathBuf};

use super::retention::dir_bytes;

/// Below this a store is never copied (sled's own files take about this much).
const FLOOR: u64 = 1024 * 1024;
/// A store is copied when its files take more than this many times its live records.
const FACTOR: u64 = 3;

fn sibling(dir: &Path, ext: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(ext);
    dir.with_file_name(name)
}

fn io_err(e: sled::Error) -> io::Error {
    e.into()
}

/// Finishes or undoes a swap a crash interrupted: a complete copy (`DIR.new` with its
/// `DIR.new.done` mark) replaces a missing `DIR`; otherwise `DIR` stands and the copy goes; a
/// left-over `DIR.old` goes once `DIR` is there.
fn recover(dir: &Path) -> io::Result<()> {
    let (new, done, old) = (
        sibling(dir, ".new"),
        sibling(dir, ".new.done"),
        sibling(dir, ".old"),
    );
    if done.exists() && new.exists() && !dir.exists() {
        std::fs::rename(&new, dir)?;
    }
    if new.exists() {
        std::fs::remove_dir_all(&new)?;
    }
    if done.exists() {
        std::fs::remove_file(&done)?;
    }
    if old.exists() && dir.exists() {
        std::fs::remove_dir_all(&old)?;
    }
    Ok(())
}

/// Copies the sled store in `dir` into a fresh folder and swaps it in when its files take more
/// than [`FACTOR`] times its live records (and more than [`FLOOR`]); the bytes on disk before and
/// after when it did. Fails (`WouldBlock`) while another process holds the store.
pub fn reclaim(dir: &Path) -> io::Result<Option<(u64, u64)>> {
    recover(dir)?;
    if !dir.exists() {
        return Ok(None);
    }
    let before = dir_bytes(dir);
    if before <= FLOOR {
        return Ok(None);
    }
    let old = super::store::open_db(dir).map_err(io_err)?;
    let mut live = 0u64;
    for name in old.tree_names() {
        for kv in old.open_tree(&name).map_err(io_err)?.iter() {
            let (k, v) = kv.map_err(io_err)?;
            live += (k.len() + v.len()) as u64;
        }
    }
    if before <= live.saturating_mul(FACTOR) {
        return Ok(None);
    }
    let (new_dir, done) = (sibling(dir, ".new"), sibling(dir, ".new.done"));
    {
        let new = super::store::open_db(&new_dir).map_err(io_err)?;
        for name in old.tree_names() {
            let (from, to) = (
                old.open_tree(&name).map_err(io_err)?,
                new.open_tree(&name).map_err(io_err)?,
            );
            for kv in from.iter() {
                let (k, v) = kv.map_err(io_err)?;
                to.insert(k, v).map_err(io_err)?;
            }
        }
        new.flush().map_err(io_err)?;
        citadel_journal::durable::DurableDir::open(&new_dir)?.sync()?;
    }
    drop(old);
    std::fs::File::create(&done)?.sync_all()?;
    sync_parent(dir)?;
    let old_dir = sibling(dir, ".old");
    std::fs::rename(dir, &old_dir)?;
    std::fs::rename(&new_dir, dir)?;
    sync_parent(dir)?;
    std::fs::remove_file(&done)?;
    std::fs::remove_dir_all(&old_dir)?;
    let after = dir_bytes(dir);
    tracing::info!(
        before,
        after,
        live,
        "control plane store copied to give back the space of removed jobs"
    );
    Ok(Some((before, after)))
}

fn sync_parent(dir: &Path) -> io::Result<()> {
    match dir.parent() {
        Some(p) => std::fs::File::open(p)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_emptied_by_removals_is_copied_small_and_keeps_what_is_left() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        {
            let db = crate::store::open_db(&dir).unwrap();
            let t = db.open_tree("jobs").unwrap();
            for i in 0u32..5000 {
                t.insert(i.to_be_bytes(), vec![7u8; 1024]).unwrap();
            }
            db.flush().unwrap();
            for i in 1u32..5000 {
                t.remove(i.to_be_bytes()).unwrap();
            }
            db.flush().unwrap();
        }
        let (before, after) = reclaim(&dir).unwrap().expect("copied");
        assert!(after * 2 < before, "{before} -> {after}");
        let db = crate::store::open_db(&dir).unwrap();
        let t = db.open_tree("jobs").unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(0u32.to_be_bytes()).unwrap().unwrap().len(), 1024);
        drop(db);
        assert_eq!(reclaim(&dir).unwrap(), None, "nothing more to give back");
    }

    #[test]
    fn a_copy_interrupted_before_the_swap_is_dropped_and_one_after_it_is_finished() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("db");
        std::fs::create_dir_all(sibling(&dir, ".new")).unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        recover(&dir).unwrap();
        assert!(!sibling(&dir, ".new").exists());
        // Crashed between the two renames: the complete copy becomes the store.
        std::fs::rename(&dir, sibling(&dir, ".old")).unwrap();
        std::fs::create_dir_all(sibling(&dir, ".new")).unwrap();
        std::fs::write(sibling(&dir, ".new").join("x"), b"1").unwrap();
        std::fs::write(sibling(&dir, ".new.done"), b"").unwrap();
        recover(&dir).unwrap();
        assert!(dir.join("x").exists());
        assert!(!sibling(&dir, ".old").exists());
        assert!(!sibling(&dir, ".new.done").exists());
    }
}
