//! The journal's errors, each saying whether trying again can help.

use std::path::PathBuf;

use crate::state::TransitionError;

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Another process (a running worker) holds the journal.
    #[error(
        "the journal at {} is in use by another process (a running worker?); \
         `citadel journal` reads it through the worker's socket {} instead",
        path.display(), socket.display()
    )]
    Locked { path: PathBuf, socket: PathBuf },
    /// The store could not read or write.
    #[error("journal storage at {}: {detail}", path.display())]
    Storage { path: PathBuf, detail: String },
    /// The store's own files are damaged beyond what it can recover.
    #[error("the journal at {} is corrupt: {detail}", path.display())]
    Corrupt { path: PathBuf, detail: String },
    /// The event cannot follow the job's history; nothing was written.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// Making events durable failed; the events may not survive a crash.
    #[error("journal flush failed: {0}")]
    Flush(String),
    /// Talking to a running worker's journal socket failed.
    #[error("journal socket {}: {detail}", path.display())]
    Remote { path: PathBuf, detail: String },
}

impl JournalError {
    /// True when the same call may succeed later without anything being changed by a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            JournalError::Locked { .. } | JournalError::Remote { .. } => true,
            JournalError::Storage { .. } | JournalError::Flush(_) => true,
            JournalError::Corrupt { .. } | JournalError::Transition(_) => false,
        }
    }

    /// True when the store itself failed to write, flush or read (the disk, not the caller): the
    /// journal can no longer promise durability and fails stop.
    pub(crate) fn is_store_failure(&self) -> bool {
        matches!(
            self,
            JournalError::Storage { .. } | JournalError::Corrupt { .. } | JournalError::Flush(_)
        )
    }
}

pub type Result<T, E = JournalError> = std::result::Result<T, E>;
