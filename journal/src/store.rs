//! The storage engine behind the journal: sled 0.34, one tree, keys from [`crate::codec`]. This
//! is the only module that names sled, so the engine can be replaced without touching the API.
//! It never interprets events; it stores and returns bytes.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::codec;
use crate::error::{JournalError, Result};

/// Where sled keeps the high-water mark of sequence numbers, so they are never reused even when
/// compaction removes the newest events.
const SEQ_FLOOR_KEY: &[u8] = b"m:seq_floor";

#[derive(Clone)]
pub(crate) struct Store {
    db: sled::Db,
    path: PathBuf,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

/// One write: `Some(value)` inserts, `None` removes.
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| storage(path, e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| storage(path, e))?;
        let db = sled::Config::new()
            .path(path)
            .flush_every_ms(Some(500))
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
        Ok(Self {
            db,
            path: path.to_path_buf(),
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

    /// Makes every write so far durable (one fsync for everything written since the last flush).
    pub(crate) fn flush(&self) -> Result<()> {
        self.db
            .flush()
            .map(|_| ())
            .map_err(|e| JournalError::Flush(e.to_string()))
    }

    /// The raw events from `from_seq` on, in sequence order.
    pub(crate) fn events_from(&self, from_seq: u64) -> RawEvents {
        let end = [codec::EVENT_PREFIX + 1];
        RawEvents {
            iter: self
                .db
                .range(codec::event_key(from_seq).to_vec()..end.to_vec()),
            path: self.path.clone(),
        }
    }

    pub(crate) fn event(&self, seq: u64) -> Result<Option<Vec<u8>>> {
        self.db
            .get(codec::event_key(seq))
            .map(|v| v.map(|v| v.to_vec()))
            .map_err(|e| storage(&self.path, e))
    }

    /// The highest sequence number ever handed out, from the events and the saved floor.
    pub(crate) fn seq_high_water(&self) -> Result<u64> {
        let last_event = self
            .db
            .range(codec::event_key(0).to_vec()..vec![codec::EVENT_PREFIX + 1])
            .next_back()
            .transpose()
            .map_err(|e| storage(&self.path, e))?
            .and_then(|(k, _)| codec::seq_of_event_key(&k))
            .unwrap_or(0);
        let floor = self
            .db
            .get(SEQ_FLOOR_KEY)
            .map_err(|e| storage(&self.path, e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0);
        Ok(last_event.max(floor))
    }

    pub(crate) fn seq_floor_op(seq: u64) -> Op {
        (SEQ_FLOOR_KEY.to_vec(), Some(seq.to_be_bytes().to_vec()))
    }

    pub(crate) fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// Raw `(seq, bytes)` pairs; an unreadable entry comes back as an error for the caller to report.
pub(crate) struct RawEvents {
    iter: sled::Iter,
    path: PathBuf,
}

impl Iterator for RawEvents {
    type Item = Result<(u64, sled::IVec)>;

    fn next(&mut self) -> Option<Self::Item> {
        Some(match self.iter.next()? {
            Ok((k, v)) => Ok((codec::seq_of_event_key(&k).unwrap_or(0), v)),
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
