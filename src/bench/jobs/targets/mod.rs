//! The transports `citadel bench` measures, each a [`Target`](super::Target): its command-line
//! arguments (where the broker is, or a throwaway local one), a fresh queue per run, how jobs are
//! enqueued, and the worker's source. Only what differs by transport lives here; the runs and the
//! report are the engine's ([`super`]).

pub(crate) mod nats;
pub(crate) mod nexus;
pub(crate) mod redis;

pub use nats::NatsBench;
pub use nexus::{NexusBench, WebSocketBench};
pub use redis::RedisBench;

/// A temporary folder for one bench's journals, unique to this process.
fn work_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("citadel-bench-{name}-{}", std::process::id()))
}
