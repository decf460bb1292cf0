//! The `JobSource` trait: the one interface the runtime uses to receive, settle, lease, cancel
//! and report jobs, whatever the transport (docs/transports.md), and the small types that travel with it.
//! This module owns the contract only; it must never contain transport code or runtime policy
//! (how many attempts, which backoff): those belong to the implementations and the runner.

use std::time::Duration;

use async_trait::async_trait;

use crate::delivery::{Incoming, Receipt};
use crate::events::WireEvent;
use crate::job::{Job, JobId};
use crate::settlement::Settlement;

/// What a transport needs besides the receipt to settle a delivery; the dead-letter entry is built
/// from it.
#[derive(Debug, Clone, Default)]
pub struct SettleContext<'a> {
    /// The job, when the delivery parsed into one.
    pub job: Option<&'a Job>,
    /// Attempts made so far (the higher of the broker's count and the journal's).
    pub attempts: u32,
    /// The error of each failed attempt, oldest first.
    pub errors: Vec<String>,
    /// The worker settling the delivery.
    pub worker_id: String,
}

/// The outcome of a lease extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// This worker still holds the delivery; its lease runs from now.
    Held,
    /// Another worker owns the delivery now, or it is gone: cancel the handler, do not ack.
    Lost,
}

/// Publishes `events` one after the other, stopping at the first error: what
/// [`JobSource::publish_all`] does unless a transport sends them together.
pub async fn publish_each<S: JobSource + ?Sized>(
    source: &S,
    events: &[WireEvent],
) -> Result<(), SourceError> {
    for event in events {
        source.publish(event).await?;
    }
    Ok(())
}

/// How recently a claim must have been asked for for its lease to stand for the job's first
/// renewal, so that renewal needs no round trip: 250 ms, and never more than an eighth of the
/// lease (the runner fences a quarter of the lease before its end, so a lease counted from up to
/// this much later than it began still fences in time).
pub fn claim_confirms(lease: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_millis(250).min(lease / 8)
}

/// The result of a health probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub healthy: bool,
    /// The round trip of the probe, when it succeeded.
    pub latency: Option<Duration>,
    /// What went wrong, when it did not.
    pub detail: Option<String>,
}

impl Health {
    pub fn up(latency: Duration) -> Self {
        Self {
            healthy: true,
            latency: Some(latency),
            detail: None,
        }
    }

    pub fn down(detail: impl Into<String>) -> Self {
        Self {
            healthy: false,
            latency: None,
            detail: Some(detail.into()),
        }
    }
}

/// What a transport can do, so the `auto` selector and the runtime can adapt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Job events reach producers (`publish` is not a no-op).
    pub events: bool,
    /// Deliveries carry leases that must be extended; `Some(lease)` says how long one lasts
    /// (extend at a fraction of it).
    pub lease: Option<Duration>,
    /// Dead-lettering keeps the entry in a dead-letter queue.
    pub dead_letter: bool,
    /// `is_cancelled` can report producer cancellations.
    pub cancellation: bool,
    /// `next` can return more than one delivery per call.
    pub batch: bool,
    /// `Settlement::Release` gives a delivery back without counting an attempt (NATS, for one,
    /// counts every redelivery; the runner's attempt rule then decides).
    pub uncounted_release: bool,
    /// A worker whose lease ran out learns it: `extend_lease` answers `Lost` and a late
    /// settlement fails with `LeaseLost` (NATS cannot tell an old delivery from the new one).
    pub lease_loss_detected: bool,
}

impl Capabilities {
    /// Everything a leased transport can promise, with leases of `lease`; a transport that
    /// cannot keep one of the promises says so with struct update syntax.
    pub fn leased(lease: Duration) -> Self {
        Self {
            events: true,
            lease: Some(lease),
            dead_letter: true,
            cancellation: true,
            batch: true,
            uncounted_release: true,
            lease_loss_detected: true,
        }
    }

    /// Delivery alone: no events, leases, dead letters, cancellation or batches.
    pub fn delivery_only() -> Self {
        Self {
            events: false,
            lease: None,
            dead_letter: false,
            cancellation: false,
            batch: false,
            uncounted_release: false,
            lease_loss_detected: false,
        }
    }
}

/// Which transport is delivering, for `citadel status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Route {
    /// The transport that delivers new jobs now (`redis`, `nats`, ...).
    pub active: String,
    /// How many times the active transport changed since the source was built.
    pub switches: u64,
    /// Why the last switch happened, when there was one.
    pub last_switch: Option<String>,
}

impl Route {
    /// The route of a transport that never switches.
    pub fn fixed(name: &str) -> Self {
        Self {
            active: name.to_string(),
            ..Self::default()
        }
    }
}

/// Why a source operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The broker cannot be reached or did not answer in time; the source reconnects.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
    /// The broker is reachable but is temporarily refusing work (loading, failing over, ...).
    #[error("broker busy: {0}")]
    Busy(String),
    /// The configuration cannot work.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// Another consumer owns the delivery now: its settlement was not applied.
    #[error("the lease on {0} is held by another worker")]
    LeaseLost(Receipt),
    /// The broker rejected a command or answered something unexpected.
    #[error("broker error: {0}")]
    Broker(String),
    /// The source was closed.
    #[error("the job source is closed")]
    Closed,
}

impl SourceError {
    /// Whether doing the same thing again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SourceError::Unavailable(_) | SourceError::Busy(_))
    }
}

/// A queue of jobs and the channel their events go to. Implementations are shared by the runtime
/// as `Arc<dyn JobSource>`.
#[async_trait]
pub trait JobSource: Send + Sync + std::fmt::Debug {
    /// The transport's name (`redis`, `nats`, ...).
    fn name(&self) -> &'static str;

    fn capabilities(&self) -> Capabilities;

    /// Waits a bounded time (about a second or two) for up to `max` deliveries; returns an empty
    /// vector when none came. Never claims more than `max` from the broker (pass the free slots).
    ///
    /// Cancel-safe: dropping the future loses nothing; deliveries claimed meanwhile are returned
    /// by a later call.
    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError>;

    /// Applies a settlement. Idempotent: settling a delivery that is already settled succeeds.
    /// Fails with [`SourceError::LeaseLost`] when another worker owns the delivery now.
    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError>;

    /// Publishes `announce` (a job's `end`) and then applies `settlement`, in one round trip,
    /// where the transport can do that for this settlement: `None` where it cannot (nothing
    /// was sent; the caller publishes, then settles). `Some(Err(LeaseLost))`: the announcement
    /// went out and another worker owns the delivery; after any other error the announcement
    /// may or may not have gone out.
    async fn announce_and_settle(
        &self,
        announce: &WireEvent,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Option<Result<(), SourceError>> {
        let _ = (announce, receipt, settlement, ctx);
        None
    }

    /// Restarts the lease of a delivery this worker is running.
    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError>;

    /// Whether the producer asked to cancel the job.
    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError>;

    /// Sends a job event (docs/wire-format.md#job-events) to whoever listens, and records the status it implies.
    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError>;

    /// Sends `events` of one job in this order, as [`JobSource::publish`] would one after the
    /// other, stopping at the first error; a transport may send them together (one script call
    /// on Redis, one round trip on NATS), and then after an error a later one may have gone out
    /// too. A wrapping source must forward it.
    async fn publish_all(&self, events: &[WireEvent]) -> Result<(), SourceError> {
        publish_each(self, events).await
    }

    /// Makes a job's success known to every worker of the transport **before** this worker
    /// journals it: `end` is the event that will announce it once the success is journaled (it
    /// is not published here). A worker that dies once its journal holds the success then
    /// leaves no other worker a reason to run the job again. Transports that keep no completion
    /// record of their own accept it and do nothing; a wrapping source must forward it.
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        let _ = end;
        Ok(())
    }

    async fn health(&self) -> Health;

    /// Reports this node's status (docs/wire-format.md#heartbeat: a JSON status message) where the transport's
    /// control plane or fleet reads it. Transports without a node channel accept and drop it.
    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        let _ = status;
        Ok(())
    }

    /// Which transport delivers jobs now and how often that changed. Only `auto` ever switches;
    /// a plain transport answers its own name.
    fn route(&self) -> Route {
        Route::fixed(self.name())
    }

    /// The claims per stream of a source that reads several (Redis, NATS); `None` for one
    /// that has no streams of its own.
    fn route_stats(&self) -> Option<crate::routing::RouteStats> {
        None
    }

    /// Stops tracking a delivery this worker will neither settle nor renew (its settlement could
    /// not be made or sent, or its lease is gone), so that its lease runs out and the broker
    /// delivers it again, here or elsewhere. Never talks to the broker; transports that keep no
    /// per-delivery state (their lease simply expires) need nothing.
    fn abandon(&self, receipt: &Receipt) {
        let _ = receipt;
    }

    /// Returns what was claimed but not handed out by `next` yet, without waiting, claiming more
    /// or stopping (`auto` hands out a demoted transport's leftovers this way).
    async fn take_buffered(&self) -> Vec<Incoming> {
        Vec::new()
    }

    /// Stops fetching and returns what was claimed but never handed out by `next`, so the caller
    /// can release it. Later `next` calls fail with [`SourceError::Closed`].
    async fn close(&self) -> Vec<Incoming> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_are_retryable() {
        assert!(SourceError::Unavailable("down".into()).is_retryable());
        assert!(SourceError::Busy("loading".into()).is_retryable());
        assert!(!SourceError::Config("no streams".into()).is_retryable());
        assert!(!SourceError::LeaseLost(Receipt::new("s", "1-0")).is_retryable());
        assert!(!SourceError::Closed.is_retryable());
    }

    #[test]
    fn the_trait_is_object_safe() {
        fn takes(_: Option<std::sync::Arc<dyn JobSource>>) {}
        takes(None);
    }
}
