//! The storage engine behind the journal: sled 0.34, one tree, block keys from [`crate::block`].
//! This is the only module that names sled, so the engine can be replaced without touching the
//! API. It never interprets blocks or events; it stores and returns bytes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::block::{block_key, seq_of_block_key, BLOCK_PREFIX};
use crate::durable::DurableDir;
use crate::error::{JournalError, Result};

/// Where sled keeps the high-water mark of sequence numbers, so they are never reused even when
/// compaction removes the newest events.
const SEQ_FLOOR_KEY: &[u8] = b"m:seq_floor";

/// sled's page cache. The journal reads its blocks once (on open) and then mostly appends, so a
/// small cache is enough; sled's default (1 GiB) would keep every block read while replaying.
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    path: PathBuf,
    durable: std::sync::Arc<DurableDir>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// A stored value as the store hands it out (cheap to move between threads).
pub(crate) type RawValue = sled::IVec;

/// One write: `Some(value)` inserts, `None` removes.
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

/// Journals this process closed in the last moments. sled releases its file lock from
/// background threads a little after the last handle drops, so reopening at once can find the
/// lock still held: only then is the open retried, briefly. A lock held by another process (a
/// running worker) is reported at once.
static RECENTLY_CLOSED: Mutex<Vec<(PathBuf, Instant)>> = Mutex::new(Vec::new());
const RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Records that this process just closed the journal at `path`.
pub(crate) fn note_closed(path: &Path) {
    let mut closed = RECENTLY_CLOSED
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    closed.retain(|(p, at)| p != path && at.elapsed() < RELEASE_GRACE);
    closed.push((path.to_path_buf(), Instant::now()));
}

fn closed_recently(path: &Path) -> bool {
    let closed = RECENTLY_CLOSED
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    closed
        .iter()
        .any(|(p, at)| p == path && at.elapsed() < RELEASE_GRACE)
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        let started = Instant::now();
        loop {
            match Self::open_once(path) {
                Err(JournalError::Locked { .. })
                    if closed_recently(path) && started.elapsed() < RELEASE_GRACE =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => return result,
            }
        }
    }

    fn open_once(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| storage(path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| storage(path, e))?;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
            .cache_capacity(CACHE_BYTES)
            .mode(sled::Mode::HighThroughput)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io) if io.to_string().contains("lock") => JournalError::Locked {
                    path: path.to_path_buf(),
                    socket: crate::socket_path(path),
                },
                sled::Error::Corruption { .. } => JournalError::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                },
                other => storage(path, other),
            })?;
        restrict_files(path);
        let durable = DurableDir::open(path).map_err(|e| storage(path, e))?;
        Ok(Self {
            db,
            path: path.to_path_buf(),
            durable: std::sync::Arc::new(durable),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Applies the writes in order (plain inserts: sled 0.34 turns every `Batch` into a log
    /// write of its own, which costs a `sync_file_range` per append). A crash can keep a prefix
    /// of the writes; the journal never depends on two of them landing together.
    pub(crate) fn write(&self, ops: Vec<Op>) -> Result<()> {
        for (key, value) in ops {
            match value {
                Some(v) => self.db.insert(key, v).map(|_| ()),
                None => self.db.remove(key).map(|_| ()),
            }
            .map_err(|e| storage(&self.path, e))?;
        }
        Ok(())
    }

    /// Makes every write so far durable: sled's flush, then `fdatasync` of the files it wrote
    /// ([`DurableDir::sync`]); once per group commit, for everything written since the last one.
    pub(crate) fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| JournalError::Flush(e.to_string()))?;
        self.durable
            .sync()
            .map_err(|e| JournalError::Flush(format!("syncing {}: {e}", self.path.display())))
    }

    /// The stored blocks, `(first seq, value)`, from the one that holds `from_seq` on.
    pub(crate) fn blocks_from(&self, from_seq: u64) -> Result<RawBlocks> {
        let start = match self.block_at(from_seq)? {
            Some((first, _)) => first,
            None => from_seq,
        };
        Ok(RawBlocks {
            iter: self
                .db
                .range(block_key(start).to_vec()..vec![BLOCK_PREFIX + 1]),
            path: self.path.clone(),
        })
    }

    /// The block that holds `seq` if it is stored: the last block starting at or before it.
    pub(crate) fn block_at(&self, seq: u64) -> Result<Option<(u64, RawValue)>> {
        Ok(self
            .db
            .range(block_key(0)..=block_key(seq))
            .next_back()
            .transpose()
            .map_err(|e| storage(&self.path, e))?
            .and_then(|(k, v)| Some((seq_of_block_key(&k)?, v))))
    }

    /// The saved high-water mark of sequence numbers (0 when none was saved).
    pub(crate) fn seq_floor(&self) -> Result<u64> {
        Ok(self
            .db
            .get(SEQ_FLOOR_KEY)
            .map_err(|e| storage(&self.path, e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    pub(crate) fn block_op(first_seq: u64, value: Option<Vec<u8>>) -> Op {
        (block_key(first_seq).to_vec(), value)
    }

    pub(crate) fn seq_floor_op(seq: u64) -> Op {
        (SEQ_FLOOR_KEY.to_vec(), Some(seq.to_be_bytes().to_vec()))
    }

    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Raw `(first seq, value)` blocks; an unreadable one comes back as an error for the caller.
pub(crate) struct RawBlocks {
    iter: sled::Iter,
    path: PathBuf,
}

impl Iterator for RawBlocks {
    type Item = Result<(u64, RawValue)>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.iter.next()? {
            Ok((k, v)) => Ok((seq_of_block_key(&k).unwrap_or(0), v)),
            Err(e) => Err(storage(&self.path, e)),
        })
    }
}

fn storage(path: &Path, e: impl std::fmt::Display) -> JournalError {
    JournalError::Storage {
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// The journal holds job payloads and results: keep its files private to the owner.
fn restrict_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_file()) {
            let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600));
        }
    }
}
