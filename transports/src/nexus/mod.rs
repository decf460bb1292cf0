//! The nexus transport (docs/transports.md, docs/wire-format.md#nexus-http): jobs over HTTP from a citadel control plane (`citadel
//! nexus serve`, or one embedded in `citadel work`), with a bearer token, long-poll claims sized
//! to the free slots, leases, settlements, cancellation and job events; and, against a server
//! that only speaks the Go agent's format, plain polling of `GET /api/v1/jobs/next` every 5 s
//! with results reported by `POST /api/v1/jobs/{id}/status`. This module owns the mapping of the
//! `JobSource` contract onto that API; it must never run jobs, journal or choose a settlement.
//!
//! - **Mode**: at connect, `GET /api/v1/health` answers on a citadel control plane (full mode);
//!   a 404 means a plain Nexus server (plain mode). `force_plain` chooses plain mode anyway.
//! - **Receipts** are (job id, lease id); every lease call and settlement names the lease, and
//!   the server answers 409 when another worker holds the job now ([`SourceError::LeaseLost`]).
//! - **Attempts** are the server's delivery count (an expired lease counts one).
//! - **Plain mode** has no leases, no retries and no events: the terminal event's result is kept
//!   in memory and sent as the `output` of the status report when the job is acked.
//! - **Terminal events ride with the settlement** when the server's health lists
//!   [`SETTLE_EVENT_FEATURE`]: `end`, `error` or `cancelled` of a leased job is kept in memory
//!   and sent in the settlement's body (one request, one flush on the server); a delivery
//!   handed back without a settlement drops it (its redelivery publishes it again from the
//!   worker's journal). Older servers get the event on its own, as before.
//! - **`start` rides with the settlement** when the health also lists [`SETTLE_EVENTS_FEATURE`]:
//!   a leased job's `start` is kept ([`kept`]) and sent in the settlement's body before the
//!   terminal event, or on its own once [`kept::LINGER`] passed without a settlement, or before
//!   any other event of the job (so the plane sees the events in order).
//! - **A fresh claim confirms the lease**: the first renewal of a job whose claim round began
//!   within [`claim_confirms`] of now is answered `Held` without a request (the lease runs at
//!   least from that round's start), and the cancellation check reads the claim's record.
//! - **`claimed` rides with the claim** when the server's health lists [`CLAIM_EVENT_FEATURE`]:
//!   once the worker has sent one `claimed` itself, each claim carries its data (meta included)
//!   and the plane records each handed-out job's `claimed` with it (durable with the claim's
//!   flush); the worker's own `claimed` of those jobs is not sent.
//! - **Batches** ([`batch`]) when the server's health lists [`BATCH_FEATURE`]: the recorded
//!   successes and the settlements of jobs finishing close together travel in one request, and
//!   the plane makes them durable with one flush before it answers each.
//! - **The cancellation check** reads the `cancel_requested` of the job's lease renewal when one
//!   is in flight or answered within [`RENEWAL_FRESH`] (the runner checks right after the
//!   delivery's first renewal began): one request less per job; otherwise it asks.

pub(crate) mod batch;
pub(crate) mod fetch;
pub(crate) mod kept;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::control_plane::wire::{
    BatchOp, RenewRequest, RenewResponse, SettleRequest, BATCH_FEATURE, CLAIM_EVENT_FEATURE,
    SETTLE_EVENTS_FEATURE, SETTLE_EVENT_FEATURE,
};
use crate::control_plane::{Client, Failure};
use crate::delivery::{Incoming, Receipt};
use crate::events::{EventData, WireEvent};
use crate::inbox::Inbox;
use crate::job::JobId;
use crate::settlement::Settlement;
use crate::source::{Capabilities, Health, JobSource, Lease, SettleContext, SourceError};
pub use fetch::SOURCE;

/// How the nexus transport behaves.
#[derive(Debug, Clone)]
pub struct NexusConfig {
    /// `http://host:port` of the control plane.
    pub url: String,
    /// The bearer token (`citadel nexus serve` writes it to `DATA/nexus/token`).
    pub token: Option<String>,
    /// The worker's id (the consumer name): lease holder and node id.
    pub worker_id: String,
    /// The node's display name (`GET /api/v1/nodes`).
    pub node_name: String,
    /// The lease asked for each claimed job; extended every third of it.
    pub lease: Duration,
    /// How long one claim waits on the server for a job (long-poll).
    pub long_poll: Duration,
    /// Plain mode: the pause between two empty polls.
    pub poll_interval: Duration,
    /// How long `next()` waits before returning empty.
    pub block: Duration,
    /// The deadline of one ordinary request.
    pub request_timeout: Duration,
    /// Node heartbeat interval (full mode).
    pub heartbeat: Duration,
    /// Speak only docs/wire-format.md#nexus-http even to a citadel control plane.
    pub force_plain: bool,
    /// The node's live routing (docs/transports.md#routing): its tag streams are the tags each
    /// claim offers, so the plane hands it only jobs whose requirements it meets.
    pub routes: Option<crate::routing::RouteFeed>,
}

impl NexusConfig {
    pub fn new(url: impl Into<String>, worker_id: impl Into<String>) -> Self {
        let worker_id = worker_id.into();
        Self {
            url: url.into(),
            token: None,
            node_name: worker_id.clone(),
            worker_id,
            lease: Duration::from_secs(60),
            long_poll: Duration::from_secs(5),
            poll_interval: Duration::from_secs(5),
            block: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_secs(30),
            force_plain: false,
            routes: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A citadel control plane: claims, leases, events, cancellation.
    Full,
    /// docs/wire-format.md#nexus-http only.
    Plain,
}

#[derive(Debug)]
pub(crate) struct Inner {
    cfg: NexusConfig,
    client: Client,
    mode: Mode,
    inbox: Inbox,
    /// Full mode: each unsettled job's lease id (events name it; the server refuses a stale one).
    leases: Mutex<HashMap<JobId, String>>,
    /// Full mode: each attempt's reported outcome, sent with its `ack`.
    reported: crate::control_plane::Outcomes,
    /// Full mode: the attempts whose `end` went out early as their recorded success.
    recorded: crate::control_plane::Recorded,
    /// Full mode: whether a settlement may carry the attempt's terminal event.
    settle_event: bool,
    /// Full mode: whether a settlement may also carry the attempt's `start`.
    settle_events: bool,
    /// Full mode: whether claims may ask the plane to record the jobs' `claimed` events.
    pub(crate) claim_event: bool,
    /// Full mode, [`BATCH_FEATURE`]: sends recorded successes and settlements in batches.
    batch: Option<batch::Batcher>,
    /// `claim_event`: the data (meta included) of the last `claimed` this worker sent itself;
    /// once known, each claim carries it.
    pub(crate) claimed_data: Mutex<Option<Value>>,
    /// `claim_event`: the jobs whose claim recorded their `claimed`; their own is not sent.
    pub(crate) announced: Mutex<std::collections::HashSet<JobId>>,
    /// Full mode, `settle_event`: each unsettled job's events waiting for its settlement.
    kept: kept::Kept,
    /// Full mode: the jobs whose claim round began recently enough to confirm their lease: the
    /// lease, when that round began ([`claim_confirms`]) and the claim's `cancel_requested`.
    pub(crate) fresh: Mutex<HashMap<JobId, (String, Instant, bool)>>,
    /// Full mode: each job's latest lease renewal, in flight (`None`) or answered (when, and
    /// its `cancel_requested`), read once by the cancellation check.
    renewals: Mutex<HashMap<JobId, watch::Receiver<Renewal>>>,
    /// Plain mode: the outcome each job's terminal event reported (success, output).
    outcomes: Mutex<HashMap<JobId, (bool, String)>>,
    /// When `JobSource::heartbeat` last reached the server: the liveness beat is skipped while
    /// full status reports keep coming.
    last_report: Mutex<Option<Instant>>,
}

impl Inner {
    /// Sends `rb` (built on this source's client) with the request timeout.
    pub(crate) async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        self.client.send(rb, self.cfg.request_timeout).await
    }

    /// POSTs one job event (JSON text) about `job`, under `lease` when the job has one.
    async fn post_event(
        &self,
        job: &JobId,
        lease: Option<&str>,
        body: String,
    ) -> Result<(), SourceError> {
        let mut path = format!("/api/v1/jobs/{}/events", path_id(job.as_str()));
        if let Some(l) = lease {
            path = format!("{path}?lease_id={}", path_id(l));
        }
        let rb = self
            .client
            .request(Method::POST, &path)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        self.send(rb).await.map(drop).map_err(|f| f.error)
    }

    /// Sends the early events `job` kept before anything else of it goes out.
    async fn send_early(&self, job: &JobId) -> Result<(), SourceError> {
        self.kept.landed(job).await;
        if let Some((lease, early)) = self.kept.take_early(job) {
            for ev in early {
                self.post_event(job, Some(&lease), ev.to_string()).await?;
            }
        }
        Ok(())
    }

    /// Sends `job`'s settlement `body`, in a batch when the plane takes them.
    async fn send_settle(&self, job: &str, body: &SettleRequest) -> Result<(), Failure> {
        if let Some(b) = &self.batch {
            let (job, settle) = (job.to_string(), body.clone());
            return b.call(BatchOp::Settle { job, settle }).await;
        }
        let path = format!("/api/v1/jobs/{}/settle", path_id(job));
        let resp = self
            .send(self.client.request(Method::POST, &path).json(body))
            .await?;
        // Read to the end, so the connection goes back to the pool.
        let _ = resp.bytes().await;
        Ok(())
    }

    /// Sends `job`'s `end` under `lease`, after any kept early event, as one batch operation.
    async fn record_batched(
        &self,
        b: &batch::Batcher,
        end: &WireEvent,
        lease: String,
    ) -> Result<(), SourceError> {
        let job = &end.job_id;
        self.kept.landed(job).await;
        let mut events = Vec::new();
        if let Some((kept_lease, early)) = self.kept.take_early(job) {
            if kept_lease == lease {
                events = early;
            } else {
                let (job, lease_id) = (job.to_string(), kept_lease);
                let op = BatchOp::Events {
                    job,
                    lease_id,
                    events: early,
                };
                b.call(op).await?;
            }
        }
        events.push(event_value(end));
        let (job, lease_id) = (job.to_string(), lease);
        b.call(BatchOp::Events {
            job,
            lease_id,
            events,
        })
        .await?;
        Ok(())
    }

    /// POSTs `body` as JSON to `path`.
    async fn post(&self, path: &str, body: &Value) -> Result<reqwest::Response, Failure> {
        self.send(self.client.request(Method::POST, path).json(body))
            .await
    }
}

/// A lease renewal's answer: when it came, and whether the job's cancellation was requested.
type Renewal = Option<(Instant, bool)>;

/// How old a renewal's answer may be for the cancellation check to use it instead of asking.
pub const RENEWAL_FRESH: Duration = Duration::from_millis(250);

pub use crate::source::claim_confirms;

/// Sends `job`'s kept `start` on its own once [`kept::LINGER`] passed without its settlement.
fn linger(inner: Arc<Inner>, job: JobId, ticket: u64) {
    tokio::spawn(async move {
        tokio::time::sleep(kept::LINGER).await;
        let Some((lease, early, done)) = inner.kept.take_early_if(&job, ticket) else {
            return;
        };
        for ev in early {
            if let Err(e) = inner.post_event(&job, Some(&lease), ev.to_string()).await {
                warn!(job_id = %job, error = %e, "could not publish a job event");
            }
        }
        done.send_replace(true);
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A [`JobSource`] on a Nexus HTTP control plane. Create it with [`NexusSource::connect`].
#[derive(Debug)]
pub struct NexusSource {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

pub(crate) fn path_id(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl NexusSource {
    /// Probes the server (choosing full or plain mode), registers the node and starts fetching.
    pub async fn connect(cfg: NexusConfig) -> Result<Self, SourceError> {
        let client = Client::new(&cfg.url, cfg.token.clone(), cfg.request_timeout)?;
        let rb = client.request(Method::GET, "/api/v1/health");
        let (mode, health) = match client.json(rb, cfg.request_timeout).await {
            Ok(v) if !cfg.force_plain => (Mode::Full, v),
            Ok(_) => (Mode::Plain, Value::Null),
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => (Mode::Plain, Value::Null),
            Err(f) => return Err(f.error),
        };
        let features = health["features"].as_array();
        let has = |name: &str| features.is_some_and(|f| f.iter().any(|f| f == name));
        let (settle_event, claim_event) = (has(SETTLE_EVENT_FEATURE), has(CLAIM_EVENT_FEATURE));
        let settle_events = settle_event && has(SETTLE_EVENTS_FEATURE);
        let batch = (mode == Mode::Full && settle_events && has(BATCH_FEATURE))
            .then(|| batch::Batcher::start(client.clone(), cfg.request_timeout));
        info!(url = %cfg.url, mode = ?mode, worker = %cfg.worker_id, lease_ms = cfg.lease.as_millis() as u64, "nexus job source connected");
        let inner = Arc::new(Inner {
            cfg,
            client,
            mode,
            inbox: Inbox::default(),
            leases: Mutex::default(),
            reported: Default::default(),
            recorded: Default::default(),
            settle_event,
            settle_events,
            claim_event,
            batch,
            claimed_data: Mutex::default(),
            announced: Mutex::default(),
            kept: kept::Kept::default(),
            fresh: Mutex::default(),
            renewals: Mutex::default(),
            outcomes: Mutex::default(),
            last_report: Mutex::default(),
        });
        let mut tasks = vec![tokio::spawn(fetch::run(inner.clone()))];
        if mode == Mode::Full {
            tasks.push(tokio::spawn(heartbeats(inner.clone())));
        }
        Ok(Self {
            inner,
            tasks: Mutex::new(tasks),
        })
    }

    /// Whether the server speaks more than docs/wire-format.md#nexus-http.
    pub fn is_full(&self) -> bool {
        self.inner.mode == Mode::Full
    }

    pub fn config(&self) -> &NexusConfig {
        &self.inner.cfg
    }

    /// The cancellation flag of `job`'s latest lease renewal, waiting for one in flight, if it
    /// is answered within [`RENEWAL_FRESH`] of now; read once.
    async fn renewal_says(&self, job: &JobId) -> Option<bool> {
        let mut renewal = lock(&self.inner.renewals).remove(job)?;
        let wait = renewal.wait_for(Option::is_some);
        let answer = *tokio::time::timeout(self.inner.cfg.request_timeout, wait)
            .await
            .ok()?
            .ok()?;
        let (at, cancelled) = answer?;
        (at.elapsed() < RENEWAL_FRESH).then_some(cancelled)
    }

    async fn settle_plain(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        let id = JobId::new(receipt.queue()).ok();
        let recorded = id
            .as_ref()
            .and_then(|id| lock(&self.inner.outcomes).remove(id));
        let (success, output) = match settlement {
            Settlement::Ack => recorded.unwrap_or((true, String::new())),
            Settlement::DeadLetter { reason } => (false, reason.clone()),
            Settlement::Retry { .. } => {
                warn!(receipt = %receipt, "a plain Nexus server cannot retry a job; reporting FAILURE");
                (
                    false,
                    ctx.errors
                        .last()
                        .cloned()
                        .unwrap_or_else(|| "failed".into()),
                )
            }
            Settlement::Release => {
                warn!(receipt = %receipt, "a plain Nexus server cannot take a job back; it stays with the server");
                return Ok(());
            }
        };
        let body = json!({
            "status": if success { "SUCCESS" } else { "FAILURE" },
            "output": output,
        });
        let path = format!("/api/v1/jobs/{}/status", path_id(receipt.queue()));
        match self.inner.post(&path, &body).await {
            Ok(_) => Ok(()),
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(f) => Err(f.error),
        }
    }
}

/// A job event as JSON.
fn event_value(event: &WireEvent) -> Value {
    serde_json::from_str(&event.to_json()).unwrap_or(Value::Null)
}

impl Inner {
    /// Forgets what this source noted about `job`'s current attempt (a settlement or a hand-back
    /// ends it), but its kept events.
    fn forget(&self, job: &JobId) {
        lock(&self.leases).remove(job);
        self.recorded.forget(job.as_str());
        lock(&self.renewals).remove(job);
        lock(&self.announced).remove(job);
        lock(&self.fresh).remove(job);
    }

    /// Whether `job`'s claim under `lease` began recently enough to count as its renewal
    /// ([`claim_confirms`]); read once. If so, the claim's answer stands for the renewal's for
    /// the cancellation check.
    fn claim_confirmed(&self, job: &JobId, lease: &str) -> bool {
        let Some((l, at, cancel)) = lock(&self.fresh).remove(job) else {
            return false;
        };
        if l != lease || at.elapsed() >= claim_confirms(self.cfg.lease) {
            return false;
        }
        let answer = watch::channel(Some((at, cancel))).1;
        lock(&self.renewals).insert(job.clone(), answer);
        true
    }
}

impl Drop for NexusSource {
    fn drop(&mut self) {
        self.inner.inbox.close();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }
}

async fn heartbeats(inner: Arc<Inner>) {
    loop {
        let reported = *lock(&inner.last_report);
        if reported.is_some_and(|at| at.elapsed() < inner.cfg.heartbeat) {
            tokio::select! {
                () = tokio::time::sleep(inner.cfg.heartbeat) => continue,
                () = inner.inbox.wait_closed() => return,
            }
        }
        let body =
            json!({"id": inner.cfg.worker_id, "name": inner.cfg.node_name, "status": "online"});
        if let Err(f) = inner.post("/api/v1/nodes/heartbeat", &body).await {
            tracing::debug!(error = %f.error, "node heartbeat failed");
        }
        tokio::select! {
            () = tokio::time::sleep(inner.cfg.heartbeat) => {}
            () = inner.inbox.wait_closed() => return,
        }
    }
}

#[async_trait]
impl JobSource for NexusSource {
    fn name(&self) -> &'static str {
        "nexus"
    }

    fn capabilities(&self) -> Capabilities {
        match self.inner.mode {
            Mode::Full => Capabilities::leased(self.inner.cfg.lease),
            Mode::Plain => Capabilities::delivery_only(),
        }
    }

    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        let max = if self.inner.mode == Mode::Plain {
            max.min(1)
        } else {
            max
        };
        self.inner.inbox.next(max, self.inner.cfg.block).await
    }

    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        if self.inner.mode == Mode::Plain {
            return self.settle_plain(receipt, settlement, ctx).await;
        }
        let outcome = self.inner.reported.take(receipt.queue());
        let job = JobId::new(receipt.queue()).ok();
        let mut carried = kept::Carried::default();
        if let Some(job) = &job {
            self.inner.forget(job);
            self.inner.kept.landed(job).await;
            carried = self.inner.kept.take(job, receipt.id());
        }
        let mut body = SettleRequest {
            lease_id: receipt.id().to_string(),
            action: settlement.name().to_string(),
            delay_ms: 0,
            reason: None,
            errors: Vec::new(),
            outcome: None,
            event: carried.terminal,
            events: carried.early,
        };
        match settlement {
            Settlement::Retry { delay } => {
                body.delay_ms = delay.as_millis() as u64;
                body.errors = ctx.errors.clone();
            }
            Settlement::DeadLetter { reason } => {
                body.reason = Some(reason.clone());
                body.errors = ctx.errors.clone();
            }
            Settlement::Ack => body.outcome = outcome.map(str::to_string),
            Settlement::Release => {}
        }
        match self.inner.send_settle(receipt.queue(), &body).await {
            Ok(()) => Ok(()),
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => Ok(()),
            Err(f) if f.status == Some(StatusCode::CONFLICT) => {
                warn!(receipt = %receipt, settlement = settlement.name(), "not settled: the lease is lost");
                Err(SourceError::LeaseLost(receipt.clone()))
            }
            Err(f) => {
                // The runner tries the settlement again: it must carry the events again.
                if let Some(job) = job {
                    let carried = kept::Carried {
                        early: body.events,
                        terminal: body.event,
                    };
                    self.inner.kept.put_back(&job, &body.lease_id, carried);
                }
                Err(f.error)
            }
        }
    }

    /// A delivery handed back without a settlement: its kept events are dropped.
    fn abandon(&self, receipt: &Receipt) {
        if let Ok(job) = JobId::new(receipt.queue()) {
            self.inner.kept.take(&job, receipt.id());
            self.inner.forget(&job);
        }
    }

    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        if self.inner.mode == Mode::Plain {
            return Ok(Lease::Held);
        }
        let body = json!(RenewRequest {
            lease_id: receipt.id().to_string(),
            lease_ms: Some(self.inner.cfg.lease.as_millis() as u64),
        });
        let path = format!("/api/v1/jobs/{}/lease", path_id(receipt.queue()));
        let job = JobId::new(receipt.queue()).ok();
        if job
            .as_ref()
            .is_some_and(|j| self.inner.claim_confirmed(j, receipt.id()))
        {
            return Ok(Lease::Held);
        }
        let (answered, renewal) = watch::channel(None);
        if let Some(job) = job {
            lock(&self.inner.renewals).insert(job, renewal);
        }
        match self.inner.post(&path, &body).await {
            Ok(resp) => {
                if let Ok(r) = resp.json::<RenewResponse>().await {
                    answered.send_replace(Some((Instant::now(), r.cancel_requested)));
                }
                Ok(Lease::Held)
            }
            Err(f) if matches!(f.status, Some(StatusCode::CONFLICT | StatusCode::NOT_FOUND)) => {
                warn!(receipt = %receipt, "lease lost");
                Ok(Lease::Lost)
            }
            Err(f) => Err(f.error),
        }
    }

    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        if self.inner.mode == Mode::Plain {
            return Ok(false);
        }
        if let Some(cancelled) = self.renewal_says(job).await {
            return Ok(cancelled);
        }
        let path = format!("/api/v1/jobs/{}", path_id(job.as_str()));
        let rb = self.inner.client.request(Method::GET, &path);
        match self
            .inner
            .client
            .json(rb, self.inner.cfg.request_timeout)
            .await
        {
            Ok(v) => Ok(
                v.get("cancel_requested").and_then(Value::as_bool) == Some(true)
                    || v.get("state").and_then(Value::as_str) == Some("cancelled"),
            ),
            Err(f) if f.status == Some(StatusCode::NOT_FOUND) => Ok(false),
            Err(f) => Err(f.error),
        }
    }

    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        if self.inner.mode == Mode::Plain {
            let outcome = match &event.data {
                EventData::End { result } => Some((
                    true,
                    match result.get("output") {
                        Some(Value::String(s)) => s.clone(),
                        _ => result.to_string(),
                    },
                )),
                EventData::Error { error, .. } => Some((false, error.clone())),
                EventData::Cancelled { reason } => Some((false, format!("cancelled: {reason}"))),
                _ => None,
            };
            if let Some(o) = outcome {
                lock(&self.inner.outcomes).insert(event.job_id.clone(), o);
            }
            return Ok(());
        }
        self.inner.reported.note(event);
        let lease = lock(&self.inner.leases).get(&event.job_id).cloned();
        if self.inner.claim_event && matches!(event.data, EventData::Claimed { .. }) {
            if lock(&self.inner.announced).remove(&event.job_id) {
                return Ok(()); // the plane recorded it with the claim
            }
            *lock(&self.inner.claimed_data) = Some(Value::Object(event.data_json()));
        }
        let job = &event.job_id;
        if let (Some(l), EventData::End { .. }) = (&lease, &event.data) {
            if self.inner.recorded.take(job.as_str(), l) {
                return Ok(()); // it went out as the recorded success
            }
        }
        if let Some(l) = lease.as_ref().filter(|_| self.inner.settle_event) {
            if event.data.is_terminal() {
                self.inner.kept.keep_terminal(job, l, event_value(event));
                return Ok(());
            }
            if self.inner.settle_events && matches!(event.data, EventData::Start { .. }) {
                if let Some(ticket) = self.inner.kept.keep_early(job, l, event_value(event)) {
                    linger(self.inner.clone(), job.clone(), ticket);
                }
                return Ok(());
            }
        }
        self.inner.send_early(job).await?;
        self.inner
            .post_event(job, lease.as_deref(), event.to_json())
            .await
    }

    /// Posts the job's `end` under its lease (after any kept `start`); the plane answers once
    /// it is durable. From then on the plane finishes the job with this result even if the
    /// lease expires (`Queue::expire`) and never hands it out again; the `end` the runner
    /// publishes next is not sent a second time, and the settlement no longer carries it.
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        let job = &end.job_id;
        let lease = lock(&self.inner.leases).get(job).cloned();
        let Some(lease) = lease.filter(|_| self.inner.mode == Mode::Full) else {
            return Ok(()); // plain mode: no lease to record it under
        };
        if let Some(b) = &self.inner.batch {
            self.inner.record_batched(b, end, lease.clone()).await?;
        } else {
            self.inner.send_early(job).await?;
            self.inner
                .post_event(job, Some(&lease), end.to_json())
                .await?;
        }
        self.inner.recorded.insert(job.as_str(), &lease);
        Ok(())
    }

    /// Posts the node's status message to the control plane's node API (full mode; a
    /// plain-mode server has no node API, so the message is dropped there).
    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        if self.inner.mode != Mode::Full {
            return Ok(());
        }
        let body = json!({
            "id": self.inner.cfg.worker_id,
            "name": self.inner.cfg.node_name,
            "status": "online",
            "report": status,
        });
        self.inner.post("/api/v1/nodes/heartbeat", &body).await?;
        *lock(&self.inner.last_report) = Some(Instant::now());
        Ok(())
    }

    async fn health(&self) -> Health {
        let path = match self.inner.mode {
            Mode::Full => "/api/v1/health",
            Mode::Plain => "/api/v1/nodes",
        };
        let started = Instant::now();
        let rb = self.inner.client.request(Method::GET, path);
        match self.inner.send(rb).await {
            Ok(_) => Health::up(started.elapsed()),
            Err(f) => Health::down(f.error.to_string()),
        }
    }

    async fn take_buffered(&self) -> Vec<Incoming> {
        self.inner.inbox.take_buffered()
    }

    async fn close(&self) -> Vec<Incoming> {
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        let patience = self.inner.cfg.long_poll + Duration::from_secs(2);
        self.inner.inbox.close_after("nexus", tasks, patience).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_jobs_become_deliveries() {
        let v = json!({"id":"j-1","type":"echo","payload":{"a":1},"attempts":2,
            "lease":{"id":"L","worker":"w","expires_ms":1},"rayId":"r"});
        let Incoming::Job(d) = fetch::from_claim(&v) else {
            panic!("not a job")
        };
        assert_eq!(d.receipt, Receipt::new("j-1", "L"));
        assert_eq!(d.job.attempt, 2);
        assert_eq!(d.job.payload, json!({"a":1}));
        assert_eq!(d.job.ray_id.as_deref(), Some("r"));
        let bad = fetch::from_claim(&json!({"id":"j-2","payload":{}}));
        assert!(matches!(bad, Incoming::Malformed(m) if m.reason == "missing type"));
        assert_eq!(path_id("a b/c"), "a%20b%2Fc");
    }
}
