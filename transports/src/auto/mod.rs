//! The `auto` transport (docs/transports.md): one [`JobSource`] over an ordered list of candidate
//! transports (best first: redis > nats > websocket > nexus). It connects to every candidate in
//! the background (one that is down at start is retried with the reconnect backoff), probes their
//! health every `probe_interval`, and lets the pure [`Selector`] decide which one delivers new
//! jobs: it falls back when the active one fails for `fail_after` and upgrades back when a better
//! one has been healthy for `recover_after`. Every switch is logged with its reason and counted
//! in [`Route`].
//!
//! In-flight work always settles on the transport that delivered it: receipts are tagged with the
//! candidate's name (`redis|jobs:v1:gpu-general`), so a settlement, a lease extension, a
//! cancellation check or an event of a job goes where the job came from, whatever is active now.
//! Whether a job runs is still decided by the runner and its journal, never by a switch.
//!
//! This module must never talk to a broker itself, nor decide a job's fate: it only routes.

mod selector;

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use selector::{Selector, SelectorPolicy, Switch};

use crate::backoff::Backoff;
use crate::delivery::{Incoming, Receipt};
use crate::events::WireEvent;
use crate::job::JobId;
use crate::settlement::Settlement;
use crate::source::{Capabilities, Health, JobSource, Lease, Route, SettleContext, SourceError};

/// Separates the candidate's name from the inner queue in a tagged receipt.
const TAG: char = '|';

type Connecting =
    Pin<Box<dyn Future<Output = Result<Arc<dyn JobSource>, SourceError>> + Send + 'static>>;

/// One transport `auto` may use: its name and how to connect to it.
pub struct TransportCandidate {
    name: String,
    connect: Box<dyn Fn() -> Connecting + Send + Sync>,
}

impl std::fmt::Debug for TransportCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportCandidate")
            .field("name", &self.name)
            .finish()
    }
}

impl TransportCandidate {
    /// A candidate connected by `connect`, which is called again (with backoff) until it
    /// succeeds or fails with a configuration error.
    pub fn new<F, Fut>(name: impl Into<String>, connect: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Arc<dyn JobSource>, SourceError>> + Send + 'static,
    {
        Self {
            name: name.into(),
            connect: Box::new(move || Box::pin(connect())),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// How `auto` probes and switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AutoConfig {
    pub policy: SelectorPolicy,
    /// How often every candidate's health is probed.
    pub probe_interval: Duration,
    /// A probe that takes longer counts as a failure.
    pub probe_timeout: Duration,
    /// How long `start` waits for the first connections and probes before choosing.
    pub start_wait: Duration,
}

impl Default for AutoConfig {
    fn default() -> Self {
        Self {
            policy: SelectorPolicy::default(),
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(2),
            start_wait: Duration::from_secs(3),
        }
    }
}

impl AutoConfig {
    /// The longest time from a broker's death to the switch: failing for `fail_after`, seen by a
    /// probe at most `probe_interval + probe_timeout` later.
    pub fn detection_bound(&self) -> Duration {
        self.policy.fail_after + self.probe_interval + self.probe_timeout
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    source: OnceLock<Arc<dyn JobSource>>,
    /// Why the candidate is not connected yet (for probes and logs).
    not_connected: Mutex<String>,
}

#[derive(Debug)]
struct Inner {
    slots: Vec<Slot>,
    selector: Mutex<Selector>,
    route: Mutex<Route>,
    /// Which candidate delivered each job in flight (events and cancellation go there).
    owners: Mutex<HashMap<JobId, usize>>,
    /// Deliveries taken from a demoted candidate's buffer, not handed out yet.
    overflow: Mutex<VecDeque<Incoming>>,
    /// Woken when the active candidate changes or the source closes.
    changed: Notify,
    closed: AtomicBool,
    cfg: AutoConfig,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    fn source(&self, i: usize) -> Option<&Arc<dyn JobSource>> {
        self.slots[i].source.get()
    }

    fn active(&self) -> usize {
        lock(&self.selector).active()
    }

    /// Feeds one observation to the selector and applies the switch it decides.
    fn observe(&self, i: usize, healthy: bool, detail: &str) {
        let switch = lock(&self.selector).observe(i, healthy, detail, Instant::now());
        if let Some(sw) = switch {
            self.switched(sw);
        }
    }

    fn switched(&self, sw: Switch) {
        let (from, to) = (&self.slots[sw.from].name, &self.slots[sw.to].name);
        warn!(from = %from, to = %to, reason = %sw.reason, "transport switch");
        {
            let mut route = lock(&self.route);
            route.active = to.clone();
            route.switches += 1;
            route.last_switch = Some(format!("{from} → {to}: {}", sw.reason));
        }
        self.changed.notify_waiters();
    }

    fn tag(&self, i: usize, item: Incoming) -> Incoming {
        let retag =
            |r: &Receipt| Receipt::new(format!("{}{TAG}{}", self.slots[i].name, r.queue()), r.id());
        match item {
            Incoming::Job(mut d) => {
                lock(&self.owners).insert(d.job.id.clone(), i);
                d.receipt = retag(&d.receipt);
                Incoming::Job(d)
            }
            Incoming::Malformed(mut m) => {
                m.receipt = retag(&m.receipt);
                Incoming::Malformed(m)
            }
        }
    }

    /// The candidate a tagged receipt came from and the receipt it gave.
    fn untag(&self, r: &Receipt) -> Result<(usize, &Arc<dyn JobSource>, Receipt), SourceError> {
        let unknown =
            || SourceError::Config(format!("receipt {r} is not from a transport of auto"));
        let (name, queue) = r.queue().split_once(TAG).ok_or_else(unknown)?;
        let i = self
            .slots
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(unknown)?;
        let source = self
            .source(i)
            .ok_or_else(|| SourceError::Unavailable(format!("{name} is not connected")))?;
        Ok((i, source, Receipt::new(queue, r.id())))
    }

    /// The candidate that delivered `job`, else the active one.
    fn owner_of(&self, job: &JobId) -> Result<&Arc<dyn JobSource>, SourceError> {
        let i = lock(&self.owners)
            .get(job)
            .copied()
            .unwrap_or(self.active());
        self.source(i).ok_or_else(|| {
            SourceError::Unavailable(format!("{} is not connected", self.slots[i].name))
        })
    }

    fn take_overflow(&self, max: usize) -> Vec<Incoming> {
        let mut o = lock(&self.overflow);
        let n = max.min(o.len());
        o.drain(..n).collect()
    }
}

/// The `auto` job source. Build it with [`AutoSource::start`].
#[derive(Debug)]
pub struct AutoSource {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl AutoSource {
    /// Starts connecting to every candidate, waits up to `cfg.start_wait` for them, and makes the
    /// best healthy one active (the best one when none is healthy yet).
    pub async fn start(
        candidates: Vec<TransportCandidate>,
        cfg: AutoConfig,
    ) -> Result<Self, SourceError> {
        if candidates.is_empty() {
            return Err(SourceError::Config(
                "auto has no transport to choose from".into(),
            ));
        }
        let names: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
        let inner = Arc::new(Inner {
            slots: names
                .iter()
                .map(|n| Slot {
                    name: n.clone(),
                    source: OnceLock::new(),
                    not_connected: Mutex::new("connecting".into()),
                })
                .collect(),
            route: Mutex::new(Route::fixed(&names[0])),
            selector: Mutex::new(Selector::new(names, cfg.policy)),
            owners: Mutex::default(),
            overflow: Mutex::default(),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            cfg,
        });
        let mut tasks: Vec<JoinHandle<()>> = candidates
            .into_iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(connect(inner.clone(), i, c)))
            .collect();
        // The first choice: every candidate connected (or given up on for now) and probed once.
        let deadline = tokio::time::Instant::now() + cfg.start_wait;
        loop {
            probe_all(&inner).await;
            let all_known = inner.slots.iter().all(|s| s.source.get().is_some());
            if all_known || tokio::time::Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        {
            let mut sel = lock(&inner.selector);
            if let Some(best) = (0..inner.slots.len()).find(|&i| sel.is_healthy(i)) {
                sel.start_at(best);
            }
            *lock(&inner.route) = Route::fixed(sel.name(sel.active()));
        }
        let chosen = inner.active();
        info!(
            active = %inner.slots[chosen].name,
            candidates = ?inner.slots.iter().map(|s| &s.name).collect::<Vec<_>>(),
            detection_bound_ms = cfg.detection_bound().as_millis() as u64,
            "auto transport started"
        );
        tasks.push(tokio::spawn(probe_forever(inner.clone())));
        Ok(Self {
            inner,
            tasks: Mutex::new(tasks),
        })
    }

    /// The names of the candidates, best first.
    pub fn candidates(&self) -> Vec<String> {
        self.inner.slots.iter().map(|s| s.name.clone()).collect()
    }
}

impl Drop for AutoSource {
    fn drop(&mut self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

/// Connects candidate `i`, retrying with the reconnect backoff; a configuration error ends the
/// attempts (it will not fix itself) and leaves the candidate unhealthy.
async fn connect(inner: Arc<Inner>, i: usize, c: TransportCandidate) {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match (c.connect)().await {
            Ok(source) => {
                info!(transport = %c.name, "auto: candidate connected");
                let _ = inner.slots[i].source.set(source);
                return;
            }
            Err(e) => {
                *lock(&inner.slots[i].not_connected) = e.to_string();
                if !e.is_retryable() {
                    warn!(transport = %c.name, error = %e, "auto: candidate cannot be used");
                    return;
                }
                let delay = retrier.next_delay();
                if retrier.failures() == 1 {
                    warn!(transport = %c.name, error = %e, "auto: candidate not reachable yet; retrying in the background");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Probes every candidate once, concurrently, and feeds the selector.
async fn probe_all(inner: &Inner) {
    let probes = inner.slots.iter().map(|slot| async {
        match slot.source.get() {
            None => (
                false,
                format!("not connected: {}", lock(&slot.not_connected)),
            ),
            Some(s) => match tokio::time::timeout(inner.cfg.probe_timeout, s.health()).await {
                Ok(h) => (h.healthy, h.detail.unwrap_or_default()),
                Err(_) => (false, "health probe timed out".to_string()),
            },
        }
    });
    let results = futures_util::future::join_all(probes).await;
    for (i, (healthy, detail)) in results.into_iter().enumerate() {
        inner.observe(i, healthy, &detail);
    }
}

async fn probe_forever(inner: Arc<Inner>) {
    loop {
        tokio::time::sleep(inner.cfg.probe_interval).await;
        if inner.closed.load(Ordering::Acquire) {
            return;
        }
        probe_all(&inner).await;
    }
}

#[async_trait]
impl JobSource for AutoSource {
    fn name(&self) -> &'static str {
        "auto"
    }

    /// What every connected candidate can do; the shortest lease, so extensions come often
    /// enough for all of them.
    fn capabilities(&self) -> Capabilities {
        let ready: Vec<Capabilities> = (0..self.inner.slots.len())
            .filter_map(|i| self.inner.source(i).map(|s| s.capabilities()))
            .collect();
        Capabilities {
            events: ready.iter().any(|c| c.events),
            lease: ready.iter().filter_map(|c| c.lease).min(),
            dead_letter: ready.iter().all(|c| c.dead_letter),
            cancellation: ready.iter().all(|c| c.cancellation),
            batch: ready.iter().all(|c| c.batch),
            uncounted_release: ready.iter().all(|c| c.uncounted_release),
            lease_loss_detected: ready.iter().all(|c| c.lease_loss_detected),
        }
    }

    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(SourceError::Closed);
        }
        let ready = inner.take_overflow(max);
        if !ready.is_empty() || max == 0 {
            return Ok(ready);
        }
        let active = inner.active();
        // Work a demoted candidate claimed before the switch is handed out first.
        for i in (0..inner.slots.len()).filter(|&i| i != active) {
            if let Some(s) = inner.source(i) {
                let left = s.take_buffered().await;
                if !left.is_empty() {
                    let tagged = left.into_iter().map(|d| inner.tag(i, d));
                    lock(&inner.overflow).extend(tagged);
                }
            }
        }
        let ready = inner.take_overflow(max);
        if !ready.is_empty() {
            return Ok(ready);
        }
        let changed = inner.changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        let Some(source) = inner.source(active) else {
            // Not connected yet: wait for a switch or a moment, then let the runner ask again.
            let _ = tokio::time::timeout(inner.cfg.probe_interval, changed).await;
            return Ok(Vec::new());
        };
        let fetched = tokio::select! {
            r = source.next(max) => r,
            () = &mut changed => return Ok(Vec::new()),
        };
        match fetched {
            Ok(items) => Ok(items.into_iter().map(|d| inner.tag(active, d)).collect()),
            Err(SourceError::Closed) if inner.closed.load(Ordering::Acquire) => {
                Err(SourceError::Closed)
            }
            Err(e @ SourceError::Config(_)) => Err(e),
            Err(e) => {
                // The active transport is failing: tell the selector, and give the runner an
                // empty round after a short pause instead of an error, so it does not back off
                // past the switch.
                inner.observe(active, false, &e.to_string());
                let _ = tokio::time::timeout(Duration::from_millis(250), changed).await;
                Ok(Vec::new())
            }
        }
    }

    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        let (_, source, inner_receipt) = self.inner.untag(receipt)?;
        source.settle(&inner_receipt, settlement, ctx).await?;
        if let Some(job) = ctx.job {
            lock(&self.inner.owners).remove(&job.id);
        }
        Ok(())
    }

    async fn announce_and_settle(
        &self,
        announce: &WireEvent,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Option<Result<(), SourceError>> {
        let (_, source, inner_receipt) = self.inner.untag(receipt).ok()?;
        let done = source
            .announce_and_settle(announce, &inner_receipt, settlement, ctx)
            .await?;
        if let (Ok(()), Some(job)) = (&done, ctx.job) {
            lock(&self.inner.owners).remove(&job.id);
        }
        Some(done)
    }

    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        let (_, source, inner_receipt) = self.inner.untag(receipt)?;
        source.extend_lease(&inner_receipt).await
    }

    fn abandon(&self, receipt: &Receipt) {
        if let Ok((_, source, inner_receipt)) = self.inner.untag(receipt) {
            source.abandon(&inner_receipt);
        }
    }

    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        self.inner.owner_of(job)?.is_cancelled(job).await
    }

    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        self.inner.owner_of(&event.job_id)?.publish(event).await
    }

    async fn publish_all(&self, events: &[WireEvent]) -> Result<(), SourceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        self.inner
            .owner_of(&first.job_id)?
            .publish_all(events)
            .await
    }

    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        self.inner.owner_of(&end.job_id)?.record_success(end).await
    }

    async fn health(&self) -> Health {
        let i = self.inner.active();
        match self.inner.source(i) {
            Some(s) => s.health().await,
            None => Health::down(format!(
                "{} not connected: {}",
                self.inner.slots[i].name,
                lock(&self.inner.slots[i].not_connected)
            )),
        }
    }

    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        let i = self.inner.active();
        match self.inner.source(i) {
            Some(s) => s.heartbeat(status).await,
            None => Err(SourceError::Unavailable(format!(
                "{} is not connected",
                self.inner.slots[i].name
            ))),
        }
    }

    fn route(&self) -> Route {
        lock(&self.inner.route).clone()
    }

    async fn take_buffered(&self) -> Vec<Incoming> {
        let mut out: Vec<Incoming> = lock(&self.inner.overflow).drain(..).collect();
        for i in 0..self.inner.slots.len() {
            if let Some(s) = self.inner.source(i) {
                let left = s.take_buffered().await;
                out.extend(left.into_iter().map(|d| self.inner.tag(i, d)));
            }
        }
        out
    }

    async fn close(&self) -> Vec<Incoming> {
        let inner = &self.inner;
        inner.closed.store(true, Ordering::Release);
        inner.changed.notify_waiters();
        let mut out: Vec<Incoming> = lock(&inner.overflow).drain(..).collect();
        for i in 0..inner.slots.len() {
            if let Some(s) = inner.source(i) {
                let left = s.close().await;
                out.extend(left.into_iter().map(|d| inner.tag(i, d)));
            }
        }
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        out
    }
}
