//! `citadel-journal` owns the local, durable record of every job's lifecycle (docs/journal.md): the event
//! type ([`JobEvent`]), the append path with group commit ([`Journal::append`]), the lifecycle
//! fold ([`JobState`]), replay, export, retention ([`RetentionPolicy`]) and the socket through
//! which `citadel journal` reads a running worker's journal ([`remote`]).
//!
//! The storage engine (sled 0.34) stays inside [`store`]; nothing in the public API names it.
//! [`durable`] is the one helper that makes a store's files survive a power failure (the control
//! plane's store uses it too).
//! This crate must never talk to a transport: the runtime journals first, then settles.

mod block;
mod codec;
mod commit;
mod compact;
pub mod durable;
mod error;
mod event;
mod journal;
mod live;
mod read;
pub mod remote;
mod replay;
mod retention;
mod state;
mod store;

pub use codec::{DecodeError, FORMAT_VERSION};
pub use error::{JournalError, Result};
pub use event::{format_ms, now_ms, EventKind, JobEvent, NewEvent};
pub use journal::{
    socket_path, Damage, Durability, Journal, JournalInfo, JournalOptions, OpenReport,
};
pub use replay::{replay, Replay, Until};
pub use retention::{
    select as select_for_removal, CompactReport, RetentionCandidate, RetentionPolicy,
};
pub use state::{JobState, Outcome, Phase, SettledAs, TransitionError, MAX_ERROR_HISTORY};
