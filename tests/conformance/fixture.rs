//! What the conformance suite needs from a transport's test set-up: a real server, sources for
//! named workers, and a producer's view of the transport (enqueue, cancel, dead letters, events)
//! in that transport's own wire format.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_transports::JobSource;
use serde_json::Value;

/// A dead-lettered job as the producer sees it.
#[derive(Debug, Clone)]
pub struct Dead {
    pub job_id: String,
    pub reason: String,
    /// The attempts the dead-letter entry records, when the transport records them.
    pub attempts: Option<u32>,
}

#[async_trait]
pub trait Fixture: Send + Sync + Sized + 'static {
    /// Starts the transport's real server(s).
    async fn start() -> Self;

    /// A source for the worker `worker`, with the lease `lease`.
    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource>;

    /// Enqueues a job as a producer of this transport would.
    async fn enqueue(&self, id: &str, ty: &str, payload: Value);

    /// Enqueues a job whose payload is not a JSON object. Returns `false` when the transport's
    /// producer side refuses it outright (having checked that refusal), so nothing is delivered.
    async fn enqueue_malformed(&self, id: &str) -> bool;

    /// Cancels a job as its producer would.
    async fn cancel(&self, id: &str);

    /// The dead-letter queue.
    async fn dead_letters(&self) -> Vec<Dead>;

    /// The docs/wire-format.md#job-events events of a job as a (late) reader sees them, in order.
    async fn events(&self, id: &str) -> Vec<Value>;
}
