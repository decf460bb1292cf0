//! One handler run under supervision: the handler gets a cancellation token that fires on the
//! producer's cancellation (polled every `cancel_poll`), the deadline, the delivery's fence (its
//! lease lost or unconfirmed for too long: [`super::hold`], which renews it) or the drain
//! timeout; chunks are relayed in order as `chunk` events and checkpointed in the journal, and
//! none is published once the delivery is fenced. A handler that panics has failed its attempt (a retryable error
//! naming the panic), like any other failure: the job gets its terminal event and settlement,
//! and the worker keeps working. It returns the handler's outcome and why it was stopped; it
//! never settles the delivery (that is [`super::attempt`]'s, after the outcome is journaled).

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citadel_journal::EventKind;
use citadel_transports::{EventData, Job};
use futures_util::FutureExt as _;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::handlers::{ChunkSink, Handler, HandlerError, JobContext};

/// Why a running handler was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    Producer,
    Deadline,
    /// The delivery was fenced: its lease is lost, or could not be renewed for too long.
    Fenced,
    Drain,
}

/// A handler that ignores its cancellation gets this long before it is dropped.
const UNRESPONSIVE_GRACE: Duration = Duration::from_secs(10);
/// Chunk checkpoints are journaled every this many chunks (and at the end).
const CHECKPOINT_EVERY: u64 = 32;

impl Shared {
    /// Runs the handler with its token, deadline, lease extension, cancellation polling and chunk
    /// relay; returns its outcome and why it was stopped, if it was.
    pub(super) async fn run_handler(
        &self,
        job: &Job,
        fence: &CancellationToken,
        delivery_id: &str,
        handler: Arc<dyn Handler>,
        timeout: Option<Duration>,
        drain: CancellationToken,
    ) -> (Result<Value, HandlerError>, Option<Stop>) {
        // A child of the fence: a fence cancels the handler at once, even while this loop waits
        // on the transport (a cancellation poll or a chunk's publish against a broker out of reach).
        let cancel = fence.child_token();
        let stop: Arc<Mutex<Option<Stop>>> = Arc::new(Mutex::new(None));
        // The first reason wins, except a fence: a fenced attempt publishes and settles nothing.
        let stop_with = |why: Stop| {
            let mut s = stop.lock().expect("poisoned");
            if s.is_none() || why == Stop::Fenced {
                *s = Some(why);
            }
            cancel.cancel();
        };
        let (chunks, mut chunk_rx) = ChunkSink::channel(256);
        let ctx = JobContext {
            job: job.clone(),
            cancel: cancel.clone(),
            deadline: timeout.map(|t| Instant::now() + t),
            chunks,
        };
        // The handler runs in its own task: it must see its cancellation (and a shell handler
        // kill its process group) at once, also while this loop waits on an unreachable broker.
        let task =
            tokio::spawn(async move { AssertUnwindSafe(handler.run(&ctx)).catch_unwind().await });
        let abort = task.abort_handle();
        let run = async {
            let guarded = async {
                tokio::select! {
                    r = task => match r {
                        Ok(outcome) => outcome.unwrap_or_else(|panic| Err(panicked(job, panic.as_ref()))),
                        Err(e) => Err(HandlerError::retryable(format!("the handler's task ended: {e}"))),
                    },
                    () = async { cancel.cancelled().await; tokio::time::sleep(UNRESPONSIVE_GRACE).await } => {
                        Err(HandlerError::retryable("the handler did not stop after cancellation"))
                    }
                }
            };
            tokio::pin!(guarded);
            let mut next_index: u64 = 0;
            // First ticks one period from now: awaiting an interval's immediate first tick goes
            // through the timer wheel and costs up to a millisecond per job.
            let every = |period: Duration| {
                tokio::time::interval_at(tokio::time::Instant::now() + period, period)
            };
            let mut cancel_poll = every(self.config.cancel_poll);
            let deadline = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(deadline);
            let mut deadline_fired = false;
            let mut fenced = false;
            let result = loop {
                tokio::select! {
                    r = &mut guarded => break r,
                    Some(content) = chunk_rx.recv() => {
                        let index = next_index;
                        next_index += 1;
                        if !fence.is_cancelled() {
                            self.publish(job, EventData::Chunk { content, index }).await;
                        }
                        if (index + 1) % CHECKPOINT_EVERY == 0 {
                            self.append_quiet(job, delivery_id, EventKind::Chunk { index });
                        }
                    }
                    () = &mut deadline, if !deadline_fired => { deadline_fired = true; stop_with(Stop::Deadline); }
                    () = drain.cancelled(), if !cancel.is_cancelled() => stop_with(Stop::Drain),
                    _ = cancel_poll.tick() => {
                        if matches!(self.source.is_cancelled(&job.id).await, Ok(true)) {
                            stop_with(Stop::Producer);
                        }
                    }
                    () = fence.cancelled(), if !fenced => {
                        fenced = true;
                        tracing::warn!(job_id = %job.id, "fenced; the handler is cancelled");
                        stop_with(Stop::Fenced);
                    }
                }
            };
            // Chunks sent just before the handler returned still go out, in order.
            while let Ok(content) = chunk_rx.try_recv() {
                let index = next_index;
                next_index += 1;
                if !fence.is_cancelled() {
                    self.publish(job, EventData::Chunk { content, index }).await;
                }
            }
            if next_index > 0 && next_index % CHECKPOINT_EVERY != 0 {
                self.append_quiet(
                    job,
                    delivery_id,
                    EventKind::Chunk {
                        index: next_index - 1,
                    },
                );
            }
            result
        };
        let result = run.await;
        // A handler that ignored its cancellation is dropped now (a shell command's child with it).
        abort.abort();
        let why = if fence.is_cancelled() {
            Some(Stop::Fenced)
        } else {
            *stop.lock().expect("poisoned")
        };
        (result, why)
    }
}

/// A handler's panic as the failure of its attempt: retryable, since a panic can come from a
/// passing state (a GPU out of memory); the attempts limit dead-letters a job that always panics.
fn panicked(job: &Job, panic: &(dyn std::any::Any + Send)) -> HandlerError {
    let what = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message");
    tracing::error!(job_id = %job.id, attempt = job.attempt, panic = what, "the handler panicked");
    HandlerError::retryable(format!("the handler panicked: {what}"))
}
