//! The worker runtime ([`Runner`]): fetches a job only when a slot is free (backpressure), runs
//! each delivery to its settlement ([`attempt`], holding it in [`hold`], one per job id through
//! [`gate`], deciding its admission in [`admission`], supervising its handler in [`supervise`]
//! and choosing the settlement in [`outcome`]), settles through the one path that journals
//! first ([`settle`]) while the next job already runs ([`slot`]), backs off when the transport goes away, and drains on shutdown (ARCHITECTURE.md):
//! stop fetching, hand back claimed-but-unstarted work at once, let running jobs finish (their
//! leases kept alive) up to the drain timeout, then interrupt and release what is left, and make
//! the journal durable. This module decides *when* things run; it never talks to a broker except
//! through [`JobSource`].

mod admission;
mod attempt;
mod fail_stop;
mod gate;
mod hold;
pub mod metrics;
mod outcome;
mod settle;
mod slot;
mod supervise;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use citadel_journal::Journal;
use citadel_transports::{
    Backoff, EventMeta, Incoming, Job, JobSource, SettleContext, Settlement, SourceError,
};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::handlers::Registry;

/// How the runner behaves. Every field has a flag, an environment variable and a config key in
/// `citadel work`.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Handlers run at once. A job's slot frees once its handler returned; its settlement goes
    /// on beside the next job, at most `max(concurrency, 32)` settlements at once (`slot.rs`).
    pub concurrency: usize,
    /// How long running jobs get to finish after SIGTERM before they are interrupted.
    pub drain_timeout: Duration,
    /// The deadline of a job whose payload has no `timeout_ms` (downloads have none).
    pub default_timeout: Duration,
    /// Attempts before a retryable failure is dead-lettered, unless the payload says `maxAttempts`.
    pub max_attempts: u32,
    /// The delay before retry N.
    pub retry: Backoff,
    /// How often a running job's cancellation key is checked.
    pub cancel_poll: Duration,
    /// The lease of the transport (a duplicate delivery of a running job comes back after it).
    pub lease: Duration,
    pub node_id: String,
    pub node_name: String,
    pub worker_id: String,
}

impl RunnerConfig {
    pub fn new(node_name: impl Into<String>, worker_id: impl Into<String>) -> Self {
        let node_name = node_name.into();
        Self {
            concurrency: 1,
            drain_timeout: Duration::from_secs(30),
            default_timeout: Duration::from_secs(3600),
            max_attempts: 3,
            retry: Backoff::JOB_RETRY,
            cancel_poll: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            node_id: node_name.clone(),
            node_name,
            worker_id: worker_id.into(),
        }
    }

    /// The job's deadline: `timeout_ms` from the payload (a number or numeric string; ≤ 0 is
    /// ignored), else the type's default (none for model downloads).
    pub fn timeout_for(&self, job: &Job) -> Option<Duration> {
        if let Some(ms) = job
            .payload_str("timeout_ms")
            .and_then(|s| s.trim().parse::<f64>().ok())
        {
            if ms > 0.0 && ms.is_finite() {
                return Some(Duration::from_millis(ms as u64));
            }
        }
        match job.job_type.as_str() {
            "model_download" | "DOWNLOAD_MODEL" => None,
            _ => Some(self.default_timeout),
        }
    }
}

/// What the runner has done, for logs, `citadel status` and the metrics.
#[derive(Debug, Default, Serialize)]
pub struct Counters {
    pub received: AtomicU64,
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub cancelled: AtomicU64,
    pub deduplicated: AtomicU64,
    pub released: AtomicU64,
    pub in_flight: AtomicU64,
    /// The worker is taking jobs: its fetch loop runs and the last fetch succeeded.
    pub consuming: AtomicBool,
    /// Why the journal cannot be written, once a write or flush failed (the worker then stops:
    /// docs/journal.md#invariants, fail-stop).
    #[serde(skip)]
    pub journal_failure: std::sync::Mutex<Option<String>>,
    /// By type and outcome, durations, queue wait, leases (for `/metrics`).
    #[serde(skip)]
    pub jobs: metrics::JobMetrics,
}

/// What every delivery task shares.
#[derive(Debug)]
pub(crate) struct Shared {
    source: Arc<dyn JobSource>,
    journal: Journal,
    registry: Registry,
    config: RunnerConfig,
    meta: EventMeta,
    counters: Arc<Counters>,
    /// One delivery per job id in flight here.
    gate: gate::Gate,
}

/// The worker: one source, one journal, the handlers.
#[derive(Debug)]
pub struct Runner {
    shared: Arc<Shared>,
}

impl Runner {
    pub fn new(
        source: Arc<dyn JobSource>,
        journal: Journal,
        registry: Registry,
        config: RunnerConfig,
    ) -> Self {
        let meta = EventMeta::new(config.node_id.clone(), config.node_name.clone());
        Self {
            shared: Arc::new(Shared {
                source,
                journal,
                registry,
                config,
                meta,
                counters: Arc::new(Counters::default()),
                gate: gate::Gate::default(),
            }),
        }
    }

    pub fn counters(&self) -> Arc<Counters> {
        self.shared.counters.clone()
    }

    /// Works until `shutdown` fires, then drains. Returns an error only for a failure that
    /// retrying cannot fix (a transport misconfiguration).
    pub async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = &self.shared;
        let slots = Arc::new(Semaphore::new(shared.config.concurrency.max(1)));
        let settling = Arc::new(Semaphore::new(slot::settle_places(
            shared.config.concurrency,
        )));
        let drain = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let mut retrier = Backoff::RECONNECT.retrier();
        tracing::info!(
            transport = shared.source.name(),
            concurrency = shared.config.concurrency,
            "worker started"
        );
        let consuming = |on: bool| shared.counters.consuming.store(on, Ordering::Relaxed);
        consuming(true);
        let mut failure = shared.journal.subscribe_failure();
        let outcome = loop {
            while tasks.try_join_next().is_some() {}
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = shutdown.cancelled() => break Ok(()),
                why = fail_stop::failed(&mut failure) => break Err(shared.fail_stop(why)),
            };
            let mut permits = vec![first];
            while let Ok(p) = slots.clone().try_acquire_many_owned(1) {
                permits.push(p);
            }
            let fetched = tokio::select! {
                r = shared.source.next(permits.len()) => r,
                () = shutdown.cancelled() => break Ok(()),
                why = fail_stop::failed(&mut failure) => break Err(shared.fail_stop(why)),
            };
            match fetched {
                Ok(items) => {
                    consuming(true);
                    if retrier.failures() > 0 {
                        tracing::info!(transport = shared.source.name(), "transport is back");
                    }
                    retrier.reset();
                    for item in items {
                        let Some(permit) = permits.pop() else {
                            tracing::error!("the transport returned more deliveries than slots; releasing the extra");
                            shared.release_unstarted(item).await;
                            continue;
                        };
                        let (shared, drain) = (shared.clone(), drain.clone());
                        let slot = slot::Slot::new(permit, settling.clone());
                        shared.counters.received.fetch_add(1, Ordering::Relaxed);
                        tasks.spawn(async move {
                            shared.counters.in_flight.fetch_add(1, Ordering::Relaxed);
                            match item {
                                Incoming::Job(d) => shared.deliver(d, drain, slot).await,
                                Incoming::Malformed(m) => shared.malformed(m).await,
                            }
                            shared.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                }
                // Only a source that cannot work (bad configuration) or is closed stops the worker.
                // Anything else, an unexpected broker reply during an outage included, is
                // waited out with the backoff: nothing claimed is lost meanwhile.
                Err(e @ (SourceError::Config(_) | SourceError::Closed)) => {
                    break Err(anyhow::Error::new(e).context("the job source failed"));
                }
                Err(e) => {
                    consuming(false);
                    let delay = retrier.next_delay();
                    if e.is_retryable() {
                        tracing::warn!(transport = shared.source.name(), error = %e, retry_in_ms = delay.as_millis() as u64,
                            failures = retrier.failures(), "cannot fetch jobs; retrying");
                    } else {
                        tracing::error!(transport = shared.source.name(), error = %e, retry_in_ms = delay.as_millis() as u64,
                            failures = retrier.failures(), "unexpected error from the job source; retrying");
                    }
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = shutdown.cancelled() => break Ok(()),
                    }
                }
            }
        };
        consuming(false);
        self.drain(&mut tasks, drain).await;
        outcome
    }

    async fn drain(&self, tasks: &mut JoinSet<()>, drain: CancellationToken) {
        let shared = &self.shared;
        let unstarted = shared.source.close().await;
        if !unstarted.is_empty() {
            tracing::info!(
                count = unstarted.len(),
                "handing back claimed jobs that never started"
            );
        }
        for item in unstarted {
            shared.release_unstarted(item).await;
        }
        if !tasks.is_empty() {
            tracing::info!(
                running = tasks.len(),
                timeout_s = shared.config.drain_timeout.as_secs(),
                "draining: waiting for running jobs"
            );
        }
        let finished = tokio::time::timeout(shared.config.drain_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                running = tasks.len(),
                "drain timeout: interrupting the jobs still running; they will be delivered again"
            );
            drain.cancel();
            while tasks.join_next().await.is_some() {}
        }
        if let Err(e) = shared.journal.sync().await {
            tracing::error!(error = %e, "could not flush the journal at shutdown");
        }
        tracing::info!("worker stopped");
    }
}

impl Shared {
    /// Gives back a delivery the journal never saw (claimed but not started at shutdown).
    async fn release_unstarted(&self, item: Incoming) {
        self.counters.released.fetch_add(1, Ordering::Relaxed);
        let ctx = SettleContext {
            job: None,
            attempts: item.attempt(),
            errors: Vec::new(),
            worker_id: self.config.worker_id.clone(),
        };
        self.send_settlement(item.receipt(), &Settlement::Release, &ctx, item.job_id())
            .await;
    }
}
