//! The control plane's state: jobs, their leases, events, the dead-letter list and the nodes,
//! kept in memory for speed and written to sled on every change. Every method that changes
//! something writes the change into sled before it returns; the API layer then awaits
//! [`Store::flush`] before it answers, so nothing acknowledged is lost on a crash or restart.
//! This module owns the job state machine (queued → leased → succeeded | failed | cancelled |
//! dead) and lease expiry; it must never speak HTTP or know about the worker runtime.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_journal::durable::DurableDir;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::sync::watch;

/// The lease a claimed job gets when the claimer asks for none.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// Deliveries of a job before an expired lease dead-letters it, unless it says `maxAttempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// A node that has not been heard from for this long is listed `offline`.
pub const NODE_OFFLINE_AFTER: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(String),
    #[error("a job with id {0} already exists")]
    Exists(String),
    #[error("the lease on job {0} is not held (it expired, or another worker holds it)")]
    LeaseLost(String),
    #[error("{0}")]
    Invalid(String),
    /// The store on disk failed (sled's error, as an I/O error: sled stays private to this crate).
    #[error("storage error: {0}")]
    Storage(#[source] std::io::Error),
}

/// sled's error as the store's.
fn storage(e: sled::Error) -> StoreError {
    StoreError::Storage(e.into())
}

impl StoreError {
    /// Whether doing the same thing again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

/// Where a control-plane job stands in the queue (not the worker journal's lifecycle state,
/// `citadel_journal::JobState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    Queued,
    Leased,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

impl QueueState {
    pub fn is_final(self) -> bool {
        !matches!(self, QueueState::Queued | QueueState::Leased)
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    pub worker: String,
    /// Unix milliseconds.
    pub expires_ms: u64,
}

/// One job, as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Map<String, Value>,
    #[serde(rename = "rayId", default, skip_serializing_if = "Option::is_none")]
    pub ray_id: Option<String>,
    /// The organization whose nodes may claim it (docs/control-plane.md#credentials-and-organizations).
    #[serde(default = "default_org")]
    pub org: String,
    pub state: QueueState,
    /// Deliveries so far.
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// `end.data.result` of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last error reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `output` of a plain `POST /jobs/{id}/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    /// The type of the last terminal event (`end`, `error`, `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Events recorded so far (their ids are 0..events).
    #[serde(default)]
    pub events: u64,
    /// Submission order.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub not_before_ms: u64,
}

/// What a producer submits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub payload: Map<String, Value>,
    #[serde(rename = "rayId", default)]
    pub ray_id: Option<String>,
    #[serde(rename = "maxAttempts", default)]
    pub max_attempts: Option<u32>,
    /// The organization whose nodes may claim it (default: `default`).
    #[serde(default)]
    pub org: Option<String>,
}

fn default_org() -> String {
    super::auth::DEFAULT_ORG.to_string()
}

/// How a worker settles a lease (the control plane's side of a transport `Settlement`).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseSettle {
    Ack,
    Retry {
        delay: Duration,
        error: Option<String>,
    },
    DeadLetter {
        reason: String,
        errors: Vec<String>,
    },
    Release,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub ip_address: String,
    pub status: String,
    /// Unix milliseconds.
    pub last_seen_ms: u64,
    /// The last status message the node sent (docs/wire-format.md#heartbeat), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}

#[derive(Debug, Default)]
struct Mem {
    jobs: HashMap<String, JobRecord>,
    /// Ready jobs: (not before, submission order, id).
    queue: BTreeSet<(u64, u64, String)>,
    next_seq: u64,
}

/// The persistent state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    /// Makes what sled flushed survive a power failure (the journal's helper).
    durable: std::sync::Arc<DurableDir>,
    jobs: sled::Tree,
    events: sled::Tree,
    nodes: sled::Tree,
    mem: Mutex<Mem>,
    /// Bumped whenever a job becomes ready.
    ready: watch::Sender<u64>,
    /// Bumped whenever an event is recorded or a job changes state.
    changed: watch::Sender<u64>,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn rfc3339_ms(ms: u64) -> String {
    citadel_transports::events::rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh job id: 32 hex digits in the 8-4-4-4-12 layout of a UUID.
pub fn new_job_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A secret: 32 random bytes as hex.
pub fn new_secret() -> String {
    random_hex(32)
}

fn event_key(job: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.len() + 9);
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir` and rebuilds the queue from what was persisted.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(dir).open().map_err(storage)?;
        let durable = std::sync::Arc::new(DurableDir::open(dir).map_err(StoreError::Storage)?);
        let jobs = db.open_tree("jobs").map_err(storage)?;
        let events = db.open_tree("events").map_err(storage)?;
        let nodes = db.open_tree("nodes").map_err(storage)?;
        let mut mem = Mem::default();
        let mut loaded: Vec<JobRecord> = Vec::new();
        for kv in jobs.iter() {
            let (_, v) = kv.map_err(storage)?;
            match serde_json::from_slice::<JobRecord>(&v) {
                Ok(r) => loaded.push(r),
                Err(e) => tracing::error!(error = %e, "skipping an unreadable job record"),
            }
        }
        loaded.sort_by_key(|r| r.seq);
        for r in loaded {
            mem.next_seq = mem.next_seq.max(r.seq + 1);
            if r.state == QueueState::Queued {
                mem.queue.insert((r.not_before_ms, r.seq, r.id.clone()));
            }
            mem.jobs.insert(r.id.clone(), r);
        }
        tracing::info!(
            jobs = mem.jobs.len(),
            queued = mem.queue.len(),
            "control plane store opened"
        );
        Ok(Self {
            db,
            durable,
            jobs,
            events,
            nodes,
            mem: Mutex::new(mem),
            ready: watch::channel(0).0,
            changed: watch::channel(0).0,
        })
    }

    /// A sled tree of this store's database, for what another module keeps beside the jobs
    /// (the node credentials); [`Store::flush`] makes its writes durable too.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(storage)
    }

    fn lock(&self) -> MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every change so far durable, through a power failure: sled's flush, then
    /// `fdatasync` of the files it wrote ([`DurableDir::sync`]). (sled's `flush_async` was seen to
    /// hang for good under concurrent requests, so the blocking `flush` runs on the blocking pool
    /// instead.)
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (db, durable) = (self.db.clone(), self.durable.clone());
        tokio::task::spawn_blocking(move || {
            db.flush().map_err(storage)?;
            durable.sync().map_err(StoreError::Storage)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("the flush task failed: {e}")))??;
        Ok(())
    }

    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn put(&self, r: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.jobs.insert(r.id.as_bytes(), bytes).map_err(storage)?;
        self.changed.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Puts a job (back) in the queue, ready at `not_before_ms`, and persists it.
    fn enqueue(&self, mem: &mut Mem, id: &str, not_before_ms: u64) -> Result<(), StoreError> {
        if let Some(r) = mem.jobs.get_mut(id) {
            r.state = QueueState::Queued;
            r.lease = None;
            r.not_before_ms = not_before_ms;
            let key = (not_before_ms, r.seq, r.id.clone());
            let r = r.clone();
            self.put(&r)?;
            mem.queue.insert(key);
            self.ready.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    pub fn submit(&self, new: NewJob) -> Result<JobRecord, StoreError> {
        let id = new.id.filter(|s| !s.is_empty()).unwrap_or_else(new_job_id);
        citadel_transports::JobId::new(id.clone())
            .map_err(|e| StoreError::Invalid(format!("invalid id: {e}")))?;
        if new.job_type.trim().is_empty() {
            return Err(StoreError::Invalid("`type` must not be empty".into()));
        }
        let max_attempts = new
            .max_attempts
            .or_else(|| {
                new.payload.get("maxAttempts").and_then(|v| match v {
                    Value::Number(n) => n.as_u64().map(|n| n as u32),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                })
            })
            .unwrap_or(DEFAULT_MAX_ATTEMPTS)
            .max(1);
        let org = new.org.unwrap_or_else(default_org);
        super::auth::valid_org(&org).map_err(StoreError::Invalid)?;
        let now = now_ms();
        let mut mem = self.lock();
        if mem.jobs.contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        let seq = mem.next_seq;
        mem.next_seq += 1;
        let r = JobRecord {
            id: id.clone(),
            job_type: new.job_type,
            payload: new.payload,
            ray_id: new.ray_id.filter(|s| !s.is_empty()),
            org,
            state: QueueState::Queued,
            attempts: 0,
            max_attempts,
            created_at: rfc3339_ms(now),
            updated_at: rfc3339_ms(now),
            lease: None,
            cancel_requested: false,
            result: None,
            error: None,
            output: None,
            errors: Vec::new(),
            dead_reason: None,
            outcome: None,
            events: 0,
            seq,
            not_before_ms: 0,
        };
        self.put(&r)?;
        mem.jobs.insert(id.clone(), r.clone());
        self.enqueue(&mut mem, &id, 0)?;
        Ok(r)
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, StoreError> {
        self.lock()
            .jobs
            .get(id)
            .cloned()
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list(&self, state: Option<QueueState>, limit: usize) -> Vec<JobRecord> {
        let mem = self.lock();
        let mut all: Vec<&JobRecord> = mem
            .jobs
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.seq));
        all.into_iter().take(limit).cloned().collect()
    }

    /// Leases up to `max` ready jobs of organization `org` to `worker`.
    pub fn claim(
        &self,
        org: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let now = now_ms();
        let mut mem = self.lock();
        let mut out = Vec::new();
        // The ready entries of this organization, up to `max`, and the stale ones on the way.
        let (mut ready, mut wanted) = (Vec::new(), 0);
        for k in mem.queue.iter().take_while(|k| k.0 <= now) {
            match mem.jobs.get(&k.2) {
                Some(r) if r.state == QueueState::Queued && r.org != org => continue,
                Some(r) if r.state == QueueState::Queued && wanted == max => break,
                Some(r) if r.state == QueueState::Queued => wanted += 1,
                _ => {}
            }
            ready.push(k.clone());
        }
        for first in ready {
            mem.queue.remove(&first);
            let Some(r) = mem.jobs.get_mut(&first.2) else {
                continue;
            };
            if r.state != QueueState::Queued {
                continue;
            }
            r.state = QueueState::Leased;
            r.attempts += 1;
            r.lease = Some(LeaseInfo {
                id: random_hex(8),
                worker: worker.to_string(),
                expires_ms: now + lease.as_millis() as u64,
            });
            r.updated_at = rfc3339_ms(now);
            let r = r.clone();
            self.put(&r)?;
            out.push(r);
        }
        Ok(out)
    }

    fn held<'a>(
        mem: &'a mut Mem,
        id: &str,
        lease_id: &str,
    ) -> Result<&'a mut JobRecord, StoreError> {
        let r = mem
            .jobs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        match &r.lease {
            Some(l) if l.id == lease_id && r.state == QueueState::Leased => Ok(r),
            _ => Err(StoreError::LeaseLost(id.to_string())),
        }
    }

    /// Restarts the lease; returns the job (its `cancel_requested` included).
    pub fn renew(
        &self,
        id: &str,
        lease_id: &str,
        lease: Duration,
    ) -> Result<JobRecord, StoreError> {
        let now = now_ms();
        let mut mem = self.lock();
        let r = Self::held(&mut mem, id, lease_id)?;
        if let Some(l) = r.lease.as_mut() {
            l.expires_ms = now + lease.as_millis() as u64;
        }
        let r = r.clone();
        self.put(&r)?;
        Ok(r)
    }

    /// Applies a worker's settlement. Settling a job that is already final succeeds (idempotent).
    pub fn settle(
        &self,
        id: &str,
        lease_id: &str,
        how: LeaseSettle,
    ) -> Result<JobRecord, StoreError> {
        let now = now_ms();
        let mut mem = self.lock();
        if let Some(r) = mem.jobs.get(id) {
            if r.state.is_final() {
                return Ok(r.clone());
            }
        }
        let r = Self::held(&mut mem, id, lease_id)?;
        r.updated_at = rfc3339_ms(now);
        r.lease = None;
        let mut requeue_at = None;
        match how {
            LeaseSettle::Ack => {
                r.state = match r.outcome.as_deref() {
                    Some("error") => QueueState::Failed,
                    Some("cancelled") => QueueState::Cancelled,
                    _ => QueueState::Succeeded,
                };
            }
            LeaseSettle::Retry { delay, error } => {
                if let Some(e) = error {
                    r.errors.push(e);
                }
                requeue_at = Some(now + delay.as_millis() as u64);
            }
            LeaseSettle::DeadLetter { reason, errors } => {
                r.state = QueueState::Dead;
                r.dead_reason = Some(reason);
                if !errors.is_empty() {
                    r.errors = errors;
                }
            }
            LeaseSettle::Release => {
                r.attempts = r.attempts.saturating_sub(1);
                requeue_at = Some(0);
            }
        }
        let r = r.clone();
        self.put(&r)?;
        if let Some(at) = requeue_at {
            self.enqueue(&mut mem, id, at)?;
            return Ok(mem.jobs[id].clone());
        }
        Ok(r)
    }

    /// `POST /api/v1/jobs/{id}/status` (docs/wire-format.md#nexus-http): the plain poller's final word on a job.
    pub fn report_status(
        &self,
        id: &str,
        success: bool,
        output: Option<String>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut mem = self.lock();
        let r = mem
            .jobs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        if r.state.is_final() {
            return Ok(());
        }
        let was_queued = r.state == QueueState::Queued;
        r.state = if success {
            QueueState::Succeeded
        } else {
            QueueState::Failed
        };
        r.lease = None;
        r.updated_at = rfc3339_ms(now);
        if !success {
            r.error = output.clone();
        }
        r.output = output;
        let r = r.clone();
        if was_queued {
            mem.queue.retain(|k| k.2 != id);
        }
        self.put(&r)
    }

    /// Records one job event (docs/wire-format.md#job-events); returns its index.
    pub fn append_event(&self, id: &str, event: &Value) -> Result<u64, StoreError> {
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Invalid("the event has no `type`".into()))?
            .to_string();
        let mut mem = self.lock();
        let r = mem
            .jobs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        let index = r.events;
        let text = serde_json::to_vec(event).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.events
            .insert(event_key(id, index), text)
            .map_err(storage)?;
        r.events += 1;
        let data = event.get("data");
        match ty.as_str() {
            "end" => {
                r.outcome = Some(ty.clone());
                r.result = data.and_then(|d| d.get("result")).cloned();
                r.error = None;
            }
            "error" => {
                r.outcome = Some(ty.clone());
                r.error = data
                    .and_then(|d| d.get("error"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            "cancelled" => r.outcome = Some(ty.clone()),
            "claimed" => {
                r.outcome = None;
            }
            _ => {}
        }
        let r = r.clone();
        self.put(&r)?;
        Ok(index)
    }

    /// The events of a job with an index of at least `from`.
    pub fn events_from(&self, id: &str, from: u64) -> Result<Vec<(u64, String)>, StoreError> {
        let start = event_key(id, from);
        let end = event_key(id, u64::MAX);
        let mut out = Vec::new();
        for kv in self.events.range(start..=end) {
            let (k, v) = kv.map_err(storage)?;
            let idx = u64::from_be_bytes(k[k.len() - 8..].try_into().unwrap_or([0; 8]));
            out.push((idx, String::from_utf8_lossy(&v).into_owned()));
        }
        Ok(out)
    }

    /// Cancels a job: a queued job ends at once (with a `cancelled` event); a leased one is
    /// flagged, and its worker sees the flag within a second.
    pub fn cancel(&self, id: &str, reason: &str) -> Result<JobRecord, StoreError> {
        let r = self.get(id)?;
        match r.state {
            QueueState::Queued => {
                {
                    let mut mem = self.lock();
                    mem.queue.retain(|k| k.2 != id);
                    if let Some(r) = mem.jobs.get_mut(id) {
                        r.state = QueueState::Cancelled;
                        r.cancel_requested = true;
                        r.updated_at = rfc3339_ms(now_ms());
                        let r = r.clone();
                        self.put(&r)?;
                    }
                }
                let ev = citadel_transports::WireEvent::new(
                    citadel_transports::JobId::new(id)
                        .map_err(|e| StoreError::Invalid(e.to_string()))?,
                    citadel_transports::EventMeta::new("nexus", "nexus"),
                    citadel_transports::EventData::Cancelled {
                        reason: reason.to_string(),
                    },
                )
                .with_ray_id(r.ray_id.clone());
                let v: Value = serde_json::from_str(&ev.to_json()).unwrap_or(Value::Null);
                self.append_event(id, &v)?;
            }
            QueueState::Leased => {
                let mut mem = self.lock();
                if let Some(r) = mem.jobs.get_mut(id) {
                    r.cancel_requested = true;
                    let r = r.clone();
                    self.put(&r)?;
                }
            }
            _ => {}
        }
        self.get(id)
    }

    /// Puts a dead-lettered job back in the queue with its attempts reset.
    pub fn requeue(&self, id: &str) -> Result<JobRecord, StoreError> {
        let mut mem = self.lock();
        let r = mem
            .jobs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
        if r.state != QueueState::Dead {
            return Err(StoreError::Invalid(format!(
                "job {id} is not dead-lettered (it is {:?})",
                r.state
            )));
        }
        r.attempts = 0;
        r.dead_reason = None;
        r.outcome = None;
        r.updated_at = rfc3339_ms(now_ms());
        let r = r.clone();
        self.put(&r)?;
        self.enqueue(&mut mem, id, 0)?;
        Ok(mem.jobs[id].clone())
    }

    /// Expired leases: the job goes back to the queue (the attempt counted at the claim stays
    /// counted), or to the dead-letter list when it has had all its attempts. Returns how many.
    pub fn expire_leases(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let mut mem = self.lock();
        let expired: Vec<String> = mem
            .jobs
            .values()
            .filter(|r| {
                r.state == QueueState::Leased
                    && r.lease.as_ref().is_some_and(|l| l.expires_ms <= now)
            })
            .map(|r| r.id.clone())
            .collect();
        for id in &expired {
            let Some(r) = mem.jobs.get_mut(id) else {
                continue;
            };
            let worker = r.lease.take().map(|l| l.worker).unwrap_or_default();
            r.updated_at = rfc3339_ms(now);
            r.errors.push(format!(
                "attempt {}: the lease of worker {worker} expired",
                r.attempts
            ));
            if r.attempts >= r.max_attempts {
                r.state = QueueState::Dead;
                r.dead_reason = Some(format!(
                    "the lease expired on attempt {} of {}",
                    r.attempts, r.max_attempts
                ));
                tracing::warn!(job_id = %id, attempts = r.attempts, "lease expired; dead-lettered");
                let r = r.clone();
                self.put(&r)?;
            } else {
                tracing::info!(job_id = %id, attempts = r.attempts, %worker, "lease expired; job back in the queue");
                let r = r.clone();
                self.put(&r)?;
                self.enqueue(&mut mem, id, 0)?;
            }
        }
        Ok(expired.len())
    }

    /// The earliest time a queued job becomes ready, if one waits for its retry delay.
    pub fn next_ready_ms(&self) -> Option<u64> {
        self.lock().queue.first().map(|k| k.0)
    }

    /// Records a node's heartbeat. A beat without a status report keeps the last report.
    /// Records a node's beat. A beat without a report keeps the last report; the merge is one
    /// atomic update, so a liveness beat racing a full report never erases it.
    pub fn heartbeat(&self, node: NodeRecord) -> Result<(), StoreError> {
        let encode = |n: &NodeRecord| serde_json::to_vec(n);
        let fresh = encode(&node).map_err(|e| StoreError::Invalid(e.to_string()))?;
        self.nodes
            .update_and_fetch(node.id.as_bytes(), |old| {
                let kept = match (&node.report, old) {
                    (None, Some(old)) => serde_json::from_slice::<NodeRecord>(old)
                        .ok()
                        .and_then(|n| n.report),
                    _ => None,
                };
                match kept {
                    Some(report) => {
                        let merged = NodeRecord {
                            report: Some(report),
                            ..node.clone()
                        };
                        Some(encode(&merged).unwrap_or_else(|_| fresh.clone()))
                    }
                    None => Some(fresh.clone()),
                }
            })
            .map_err(storage)?;
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut out = Vec::new();
        for kv in self.nodes.iter() {
            let (_, v) = kv.map_err(storage)?;
            if let Ok(n) = serde_json::from_slice::<NodeRecord>(&v) {
                out.push(n);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ty: &str) -> NewJob {
        NewJob {
            id: None,
            job_type: ty.into(),
            payload: Map::new(),
            ray_id: None,
            max_attempts: Some(2),
            org: None,
        }
    }

    #[test]
    fn claim_settle_expire_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let s = Store::open(dir.path()).unwrap();
            id = s.submit(job("echo")).unwrap().id;
            let got = s
                .claim("default", "w", 4, Duration::from_millis(0))
                .unwrap();
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].attempts, 1);
            assert_eq!(s.expire_leases().unwrap(), 1);
            assert_eq!(s.get(&id).unwrap().state, QueueState::Queued);
            let got = s.claim("default", "w", 4, DEFAULT_LEASE).unwrap();
            let lease = got[0].lease.clone().unwrap();
            assert!(matches!(
                s.settle(&id, "other", LeaseSettle::Ack),
                Err(StoreError::LeaseLost(_))
            ));
            s.settle(&id, &lease.id, LeaseSettle::Release).unwrap();
            assert_eq!(s.get(&id).unwrap().attempts, 1);
            s.submit(job("noop")).unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.list(Some(QueueState::Queued), 10).len(), 2);
        let got = s
            .claim("default", "w", 1, Duration::from_millis(0))
            .unwrap();
        assert_eq!(got[0].id, id, "submission order survives a restart");
        s.expire_leases().unwrap();
        assert_eq!(s.get(&id).unwrap().state, QueueState::Dead);
        s.requeue(&id).unwrap();
        assert_eq!(s.get(&id).unwrap().state, QueueState::Queued);
    }
}
