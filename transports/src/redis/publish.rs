//! Job events on Redis (docs/wire-format.md#job-events): each event `PUBLISH`es on
//! `stream:v1:{jobId}`, is appended to the capped, expiring stream `stream:v1:{jobId}:events`
//! (fields `type` and `event`, so a late subscriber can resume from an index or an entry id;
//! kept `events_grace` after the job's terminal event), and updates the status hash
//! `job:{jobId}:status` (and writes the completion record of an `end`), all in one script call
//! (`record`). The same task writes the completion record of a success ahead of its `end`
//! (`Publisher::record`). One [`Publisher`] task sends every event of the source: whatever is
//! queued while a batch is in flight goes out as the next single pipeline (one write, one round
//! trip), in order; each caller still waits for its own event. This module must never decide
//! which event is due.

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::trace;

use super::config::RedisConfig;
use super::record::{self, Write};
use crate::events::WireEvent;
use crate::source::SourceError;

/// The most events sent in one pipeline.
const MAX_BATCH: usize = 512;

/// What the sending task writes: a job event, or only the completion record of a coming `end`.
#[derive(Debug)]
enum Item {
    Event(WireEvent),
    Record(WireEvent),
}

type Request = (Item, oneshot::Sender<Result<(), SourceError>>);

/// The source's event sender.
#[derive(Debug)]
pub(crate) struct Publisher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Publisher {
    /// Starts the sending task on `conn`.
    pub(crate) fn start(conn: ConnectionManager, cfg: RedisConfig) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx }, tokio::spawn(run(rx, conn, cfg)))
    }

    /// Sends `event` (batched with whatever else is waiting) and returns once Redis has it.
    pub(crate) async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        self.send(Item::Event(event.clone())).await
    }

    /// Writes the completion record of `end` (not published) and returns once Redis has it.
    pub(crate) async fn record(&self, end: &WireEvent) -> Result<(), SourceError> {
        self.send(Item::Record(end.clone())).await
    }

    async fn send(&self, item: Item) -> Result<(), SourceError> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((item, done))
            .map_err(|_| SourceError::Closed)?;
        result.await.map_err(|_| SourceError::Closed)?
    }
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut conn: ConnectionManager,
    cfg: RedisConfig,
) {
    let mut batch: Vec<Request> = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut p = redis::pipe();
        for (item, _) in &batch {
            match item {
                Item::Event(event) => record::add(&mut p, &cfg, Write::Event, event),
                Item::Record(end) => record::add(&mut p, &cfg, Write::Record, end),
            }
        }
        let result = record::query(&mut conn, &p).await;
        trace!(
            events = batch.len(),
            ok = result.is_ok(),
            "published job events"
        );
        for (_, done) in batch.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}
