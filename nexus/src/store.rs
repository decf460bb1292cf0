//! The control plane's persistence: the queue ([`super::queue`], where every decision is made)
//! kept in memory, each record it changes written to sled, the job events and the nodes. Every
//! method that changes something writes the change into sled before it returns; the API layer
//! then awaits [`Store::flush`] before it answers, so nothing acknowledged is lost on a crash,
//! restart or power failure. A request whose writes a finished flush already covered does not
//! flush again; concurrent flushes share sled's and the kernel's commit ([`DurableDir`]).
//!
//! Two writes are answered without a flush, because what they say survives a crash anyway: a
//! lease renewal of the same length (not even written: [`Store::open`] gives every persisted
//! lease its full length again from the restart, so no worker's renewed lease can end early),
//! and a leased worker's non-terminal event (sled writes are ordered: the flush of the
//! attempt's settlement, which carries the outcome, makes it durable). It must never speak
//! HTTP, decide a job's state itself, or let a sled type out of the crate.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use citadel_journal::durable::DurableDir;
use serde_json::Value;
use tokio::sync::watch;

pub use super::ids::{new_job_id, new_secret, now_ms};
pub use super::queue::{Offer, Queue, Reporter, DEFAULT_MAX_ATTEMPTS};
pub use super::record::{
    rfc3339_ms, JobRecord, LeaseInfo, LeaseSettle, NewJob, NodeRecord, Outcome, QueueState,
};

/// The lease a claim gets unless it asks for another.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// A node that has not been heard from for this long is listed `offline`.
pub const NODE_OFFLINE_AFTER: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("job {0} not found")]
    NotFound(String),
    #[error("a job with id {0} already exists")]
    Exists(String),
    #[error("the lease on job {0} is not held (it expired, another worker holds it, or the job is final)")]
    LeaseLost(String),
    #[error("{0}")]
    Invalid(String),
    /// The store on disk failed (sled's error, as an I/O error: sled stays private to this crate).
    #[error("storage error: {0}")]
    Storage(#[source] std::io::Error),
}

impl StoreError {
    /// Whether doing the same thing again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::Storage(_))
    }
}

/// sled's error as the store's.
fn storage(e: sled::Error) -> StoreError {
    StoreError::Storage(e.into())
}

/// How long an open waits for sled's lock on a folder this process just closed: sled releases it
/// from background threads a little after the last handle drops (the journal's store waits the
/// same way).
const LOCK_RELEASE_GRACE: Duration = Duration::from_secs(2);

/// Opens the sled database in `dir`, waiting briefly while the lock of a database closed a moment
/// ago is still held; another process's lock is reported once the grace is over.
pub(crate) fn open_db(dir: &Path) -> Result<sled::Db, sled::Error> {
    let started = std::time::Instant::now();
    loop {
        match sled::Config::new().path(dir).open() {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_RELEASE_GRACE =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn event_key(job: &str, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(job.len() + 9);
    k.extend_from_slice(job.as_bytes());
    k.push(0);
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// A persisted job as a restarted control plane holds it: a lease gets its full length again
/// from `now` (it never ends earlier than persisted), so a renewal answered before the restart
/// but never made durable cannot end early and let a second worker claim the job while the
/// first still trusts its lease.
fn restarted(mut r: JobRecord, now: u64) -> JobRecord {
    if let Some(l) = r.lease.as_mut() {
        if let Some(length) = l.length_ms {
            l.expires_ms = l.expires_ms.max(now.saturating_add(length));
        }
    }
    r
}

/// The persistent state. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    db: sled::Db,
    /// Makes what sled flushed survive a power failure (the journal's helper).
    durable: Arc<DurableDir>,
    /// The store's folder (its size on disk is [`Store::stats`]).
    dir: std::path::PathBuf,
    jobs: sled::Tree,
    events: sled::Tree,
    nodes: sled::Tree,
    queue: Mutex<Queue>,
    /// Writes handed to sled so far (group commit: a flush covers every write before it).
    written: AtomicU64,
    /// Writes known durable: every write counted before a finished flush began.
    synced: AtomicU64,
    /// Bumped whenever a job becomes ready.
    ready: watch::Sender<u64>,
    /// Bumped whenever an event is recorded or a job changes state.
    changed: watch::Sender<u64>,
    /// Finished jobs whose events wait to be folded ([`Store::fold_events`]).
    to_fold: Mutex<Vec<String>>,
    /// The console's indexes by state and time ([`super::index`]): noted on every write.
    index: super::index::Index,
}

impl Store {
    /// Opens (or creates) the store in `dir` and rebuilds the queue from what was persisted.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = open_db(dir).map_err(storage)?;
        let durable = Arc::new(DurableDir::open(dir).map_err(StoreError::Storage)?);
        let jobs = db.open_tree("jobs").map_err(storage)?;
        let events = db.open_tree("events").map_err(storage)?;
        let nodes = db.open_tree("nodes").map_err(storage)?;
        let mut loaded: Vec<JobRecord> = Vec::new();
        for kv in jobs.iter() {
            let (_, v) = kv.map_err(storage)?;
            match serde_json::from_slice::<JobRecord>(&v) {
                Ok(r) => loaded.push(r),
                Err(e) => tracing::error!(error = %e, "skipping an unreadable job record"),
            }
        }
        let index = super::index::Index::of(loaded.iter());
        let now = now_ms();
        let queue = Queue::from_records(loaded.into_iter().map(|r| restarted(r, now)));
        tracing::info!(
            jobs = queue.len(),
            queued = queue.ready_len(),
            "control plane store opened"
        );
        Ok(Self {
            db,
            durable,
            dir: dir.to_path_buf(),
            jobs,
            events,
            nodes,
            queue: Mutex::new(queue),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            ready: watch::channel(0).0,
            changed: watch::channel(0).0,
            to_fold: Mutex::new(Vec::new()),
            index,
        })
    }

    /// A sled tree of this store's database, for what another module keeps beside the jobs
    /// (the node credentials); after writing to it, [`Store::wrote`] then [`Store::flush`] make
    /// the writes durable.
    pub(crate) fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        self.db.open_tree(name).map_err(storage)
    }

    /// Notes a write made to a [`Store::tree`], so the next [`Store::flush`] covers it.
    pub(crate) fn wrote(&self) {
        self.written.fetch_add(1, Ordering::SeqCst);
    }

    /// The console's indexes of the jobs ([`super::index::Index`]).
    pub fn index(&self) -> &super::index::Index {
        &self.index
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes every change so far durable, through a power failure: sled's flush, then
    /// `fdatasync` of the files it wrote ([`DurableDir::sync`]). A caller whose writes a finished
    /// flush already covered returns at once; the others flush, concurrently (sled and the
    /// kernel fold concurrent flushes of the same files into one commit: measured, a flush lock
    /// that queued them one after another was slower). (sled's `flush_async` was seen to hang
    /// for good under concurrent requests, so the blocking `flush` runs on the blocking pool.)
    pub async fn flush(&self) -> Result<(), StoreError> {
        let upto = self.written.load(Ordering::SeqCst);
        if self.synced.load(Ordering::SeqCst) >= upto {
            return Ok(());
        }
        let (db, durable) = (self.db.clone(), self.durable.clone());
        tokio::task::spawn_blocking(move || {
            db.flush().map_err(storage)?;
            durable.sync().map_err(StoreError::Storage)
        })
        .await
        .map_err(|e| StoreError::Invalid(format!("the flush task failed: {e}")))??;
        self.synced.fetch_max(upto, Ordering::SeqCst);
        Ok(())
    }

    pub fn subscribe_ready(&self) -> watch::Receiver<u64> {
        self.ready.subscribe()
    }

    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Writes the records the queue changed; wakes waiting claimers when one is ready.
    fn put(&self, records: &[JobRecord]) -> Result<(), StoreError> {
        for r in records {
            let bytes = serde_json::to_vec(r).map_err(|e| StoreError::Invalid(e.to_string()))?;
            self.jobs.insert(r.id.as_bytes(), bytes).map_err(storage)?;
        }
        if !records.is_empty() {
            self.written.fetch_add(1, Ordering::SeqCst);
            self.changed.send_modify(|n| *n += 1);
            self.note_finished(records);
            self.index.note(records, now_ms());
        }
        if records.iter().any(|r| r.state == QueueState::Queued) {
            self.ready.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    pub fn submit(&self, new: NewJob) -> Result<JobRecord, StoreError> {
        let mut q = self.lock();
        let r = q.submit(new, new_job_id(), now_ms())?;
        self.put(std::slice::from_ref(&r))?;
        Ok(r)
    }

    pub fn get(&self, id: &str) -> Result<JobRecord, StoreError> {
        self.lock().get(id).cloned()
    }

    /// The organization of job `id`, without copying its record (every request about a job
    /// checks it).
    pub fn org_of(&self, id: &str) -> Result<String, StoreError> {
        self.lock().get(id).map(|r| r.org.clone())
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list(&self, state: Option<QueueState>, limit: usize) -> Vec<JobRecord> {
        self.lock().list(state, limit)
    }

    /// Leases up to `max` ready jobs of organization `org` to `worker`.
    pub fn claim(
        &self,
        org: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.claim_offered(org, &Offer::default(), worker, max, lease)
    }

    /// [`Store::claim`] for a node offering `offer`: only the jobs whose requirements it meets.
    pub fn claim_offered(
        &self,
        org: &str,
        offer: &Offer,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<JobRecord>, StoreError> {
        self.claim_announced(org, offer, worker, max, lease, None)
    }

    /// [`Store::claim_offered`] that also records, when `claimed` is given, each claimed job's
    /// `claimed` event with that `data`, under its new lease: written with the claim, so the
    /// claim's flush makes both durable and the worker sends no `claimed` request of its own.
    pub fn claim_announced(
        &self,
        org: &str,
        offer: &Offer,
        worker: &str,
        max: usize,
        lease: Duration,
        claimed: Option<&Value>,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let mut q = self.lock();
        let now = now_ms();
        let mut got = q.claim_offered(
            org,
            offer,
            worker,
            max,
            lease,
            now,
            super::ids::new_lease_id,
        );
        if let Some(data) = claimed {
            for r in &mut got {
                let ev = claimed_event(r, data);
                let lease_id = r.lease.as_ref().map(|l| l.id.clone()).unwrap_or_default();
                *r = self.insert_event(&mut q, &r.id, Reporter::Lease(&lease_id), &ev)?;
            }
        }
        self.put(&got)?;
        Ok(got)
    }

    /// Restarts the lease; returns the job (its `cancel_requested` included) and whether the
    /// answer must wait for [`Store::flush`]: only when the lease's length changed. A renewal of
    /// the same length is not written at all: after a restart [`Store::open`] gives the lease
    /// that length again from the restart, later than any renewal answered before it.
    pub fn renew(
        &self,
        id: &str,
        lease_id: &str,
        lease: Duration,
    ) -> Result<(JobRecord, bool), StoreError> {
        let mut q = self.lock();
        let length = q.get(id)?.lease.as_ref().and_then(|l| l.length_ms);
        let r = q.renew(id, lease_id, lease, now_ms())?;
        let durable = length != Some(lease.as_millis() as u64);
        if durable {
            self.put(std::slice::from_ref(&r))?;
        }
        Ok((r, durable))
    }

    /// Applies the current lease's settlement ([`Queue::settle`]).
    pub fn settle(
        &self,
        id: &str,
        lease_id: &str,
        how: LeaseSettle,
    ) -> Result<JobRecord, StoreError> {
        self.settle_reporting(id, lease_id, None, how)
    }

    /// [`Store::settle`], recording the attempt's terminal `event` under the same lease first
    /// (one write, one flush). A repeat of the settlement that made the job final records
    /// nothing again and is answered with the job.
    pub fn settle_reporting(
        &self,
        id: &str,
        lease_id: &str,
        event: Option<&Value>,
        how: LeaseSettle,
    ) -> Result<JobRecord, StoreError> {
        self.settle_recording(id, lease_id, event.as_slice(), how)
    }

    /// [`Store::settle_reporting`] with any number of the attempt's events (its `start`, then
    /// its terminal event), recorded in order under the lease in the settlement's write.
    pub fn settle_recording(
        &self,
        id: &str,
        lease_id: &str,
        events: &[&Value],
        how: LeaseSettle,
    ) -> Result<JobRecord, StoreError> {
        let mut q = self.lock();
        let was_final = q.get(id)?.state.is_final();
        for event in events.iter().filter(|_| !was_final) {
            self.insert_event(&mut q, id, Reporter::Lease(lease_id), event)?;
        }
        let r = q.settle(id, lease_id, how, now_ms())?;
        if !was_final {
            self.put(std::slice::from_ref(&r))?;
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
        let mut q = self.lock();
        let changed = q.report_status(id, success, output, now_ms())?;
        self.put(changed.as_slice())
    }

    /// Records one job event (docs/wire-format.md#job-events) reported `by`; returns its index.
    pub fn append_event(
        &self,
        id: &str,
        by: Reporter<'_>,
        event: &Value,
    ) -> Result<u64, StoreError> {
        self.append_events(id, by, &[event])
    }

    /// Records job events in order, as that many [`Store::append_event`] would, writing the
    /// job's record once (after the last one recorded); returns the last one's index. The first
    /// refused event ends it: those before it stay recorded.
    pub fn append_events(
        &self,
        id: &str,
        by: Reporter<'_>,
        events: &[&Value],
    ) -> Result<u64, StoreError> {
        let mut q = self.lock();
        let mut last = None;
        let mut refused = None;
        for event in events {
            match self.insert_event(&mut q, id, by, event) {
                Ok(r) => last = Some(r),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        if let Some(r) = &last {
            self.put(std::slice::from_ref(r))?;
        }
        match (refused, last) {
            (Some(e), _) => Err(e),
            (None, Some(r)) => Ok(r.events - 1),
            (None, None) => Err(StoreError::Invalid("no events to record".into())),
        }
    }

    /// Checks and writes one event; the changed job, not yet written.
    fn insert_event(
        &self,
        q: &mut Queue,
        id: &str,
        by: Reporter<'_>,
        event: &Value,
    ) -> Result<JobRecord, StoreError> {
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Invalid("the event has no `type`".into()))?;
        let text = serde_json::to_vec(event).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let r = q.event(id, by, ty, event.get("data"))?;
        self.events
            .insert(event_key(id, r.events - 1), text)
            .map_err(storage)?;
        Ok(r)
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
        let (r, ended) = {
            let mut q = self.lock();
            let (r, ended) = q.cancel(id, now_ms())?;
            self.put(std::slice::from_ref(&r))?;
            (r, ended)
        };
        if ended {
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
            self.append_event(id, Reporter::Plane, &v)?;
        }
        self.get(id)
    }

    /// Puts a dead-lettered job back in the queue with its attempts reset.
    pub fn requeue(&self, id: &str) -> Result<JobRecord, StoreError> {
        let mut q = self.lock();
        let r = q.requeue(id, now_ms())?;
        self.put(std::slice::from_ref(&r))?;
        Ok(r)
    }

    /// Expires the leases past their time ([`Queue::expire`]); returns how many.
    pub fn expire_leases(&self) -> Result<usize, StoreError> {
        let mut q = self.lock();
        let changed = q.expire(now_ms());
        self.put(&changed)?;
        Ok(changed.len())
    }

    /// The earliest time a queued job becomes ready, if one waits for its retry delay.
    pub fn next_ready_ms(&self) -> Option<u64> {
        self.lock().next_ready_ms()
    }

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
        self.written.fetch_add(1, Ordering::SeqCst);
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

    /// Removes up to `limit` of the finished jobs retention no longer keeps ([`Queue::retire`]),
    /// their events included, holding the queue for only those; what it removed (not yet
    /// flushed).
    pub fn retire(
        &self,
        policy: &super::queue::Retention,
        limit: usize,
    ) -> Result<Removed, StoreError> {
        let mut q = self.lock();
        let ids = q.retire(policy, now_ms(), limit);
        self.remove_jobs(&ids)
    }

    /// Removes a dead-lettered job and its events ([`Queue::purge`]; not yet flushed).
    pub fn purge(&self, id: &str) -> Result<Removed, StoreError> {
        let mut q = self.lock();
        q.purge(id)?;
        self.remove_jobs(&[id.to_string()])
    }

    /// Deletes these jobs' records and events from sled (the queue has already let them go).
    fn remove_jobs(&self, ids: &[String]) -> Result<Removed, StoreError> {
        let mut done = Removed::default();
        self.index.forget(ids);
        for id in ids {
            let mut batch = sled::Batch::default();
            for kv in self
                .events
                .range(event_key(id, 0)..=event_key(id, u64::MAX))
            {
                let (k, _) = kv.map_err(storage)?;
                batch.remove(k);
                done.events += 1;
            }
            self.events.apply_batch(batch).map_err(storage)?;
            self.jobs.remove(id.as_bytes()).map_err(storage)?;
            done.jobs += 1;
        }
        if done.jobs > 0 {
            self.written.fetch_add(1, Ordering::SeqCst);
            self.changed.send_modify(|n| *n += 1);
        }
        Ok(done)
    }

    /// Folds a finished job's stored events ([`super::retention::fold`]): a run of `chunk`
    /// events becomes one. Nothing happens to a job that is not final or already folded; the
    /// queue's lock is held, so retention cannot remove the job meanwhile. How many records went.
    pub fn fold_events(&self, id: &str) -> Result<usize, StoreError> {
        let q = self.lock();
        if !q.get(id).is_ok_and(|r| r.state.is_final()) {
            return Ok(0);
        }
        let events = self.events_from(id, 0)?;
        let (keep, drop) = super::retention::fold(&events);
        if drop.is_empty() {
            return Ok(0);
        }
        let mut batch = sled::Batch::default();
        for (idx, text) in keep {
            batch.insert(event_key(id, idx), text.into_bytes());
        }
        for idx in &drop {
            batch.remove(event_key(id, *idx));
        }
        self.events.apply_batch(batch).map_err(storage)?;
        self.written.fetch_add(1, Ordering::SeqCst);
        Ok(drop.len())
    }

    /// Notes the finished jobs among `records` with more than a few events, for
    /// [`Store::take_to_fold`].
    fn note_finished(&self, records: &[JobRecord]) {
        let done = records
            .iter()
            .filter(|r| r.state.is_final() && r.events > super::retention::FOLD_FROM);
        let mut pending = None;
        for r in done {
            pending
                .get_or_insert_with(|| self.to_fold.lock().unwrap_or_else(PoisonError::into_inner))
                .push(r.id.clone());
        }
    }

    /// The finished jobs noted since the last call (their events are folded by the caller).
    pub fn take_to_fold(&self) -> Vec<String> {
        std::mem::take(&mut *self.to_fold.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Every final job with more than a few events (at start, to fold what a stop left).
    pub fn finished_with_events(&self) -> Vec<String> {
        let q = self.lock();
        q.list(None, usize::MAX)
            .into_iter()
            .filter(|r| r.state.is_final() && r.events > super::retention::FOLD_FROM)
            .map(|r| r.id)
            .collect()
    }

    /// The store's size: jobs held and bytes its files take on disk.
    pub fn stats(&self) -> StoreStats {
        let (jobs, by_state) = {
            let q = self.lock();
            let by_state = q.count_by_state().into_iter();
            (
                q.len() as u64,
                by_state
                    .map(|(s, n)| (format!("{s:?}").to_lowercase(), n))
                    .collect(),
            )
        };
        StoreStats {
            jobs,
            by_state,
            events: self.events.len() as u64,
            bytes_on_disk: self.dir_bytes(),
        }
    }

    fn dir_bytes(&self) -> u64 {
        super::retention::dir_bytes(&self.dir)
    }
}

/// What retention or a purge removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Removed {
    pub jobs: u64,
    pub events: u64,
}

/// [`Store::stats`]: `GET /api/v1/stats` (docs/control-plane.md#retention).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct StoreStats {
    pub jobs: u64,
    pub by_state: std::collections::BTreeMap<String, u64>,
    pub events: u64,
    pub bytes_on_disk: u64,
}

/// The `claimed` job event (docs/wire-format.md#job-events) of a job just claimed, stamped now.
fn claimed_event(r: &JobRecord, data: &Value) -> Value {
    let mut ev = serde_json::json!({
        "version": citadel_transports::events::EVENT_VERSION,
        "type": "claimed",
        "jobId": r.id,
        "timestamp": citadel_transports::events::rfc3339(std::time::SystemTime::now()),
        "data": data,
    });
    if let Some(ray) = r.ray_id.as_deref().filter(|s| !s.is_empty()) {
        ev["rayId"] = Value::String(ray.to_string());
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn job(ty: &str) -> NewJob {
        NewJob {
            id: None,
            job_type: ty.into(),
            payload: Map::new(),
            ray_id: None,
            max_attempts: Some(2),
            org: None,
            requires: Vec::new(),
            target_node: None,
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
                s.settle(&id, "other", LeaseSettle::Ack { outcome: None }),
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

    #[test]
    fn events_recorded_together_write_the_record_once_and_stop_at_a_refused_one() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let s = Store::open(dir.path()).unwrap();
            id = s.submit(job("echo")).unwrap().id;
            let got = s.claim("default", "w", 1, DEFAULT_LEASE).unwrap();
            let lease = got[0].lease.clone().unwrap().id;
            let start = serde_json::json!({"type": "start", "jobId": id, "data": {}});
            let end = serde_json::json!({"type": "end", "jobId": id, "data": {"result": 7}});
            let by = Reporter::Lease(&lease);
            assert_eq!(s.append_events(&id, by, &[&start, &end]).unwrap(), 1);
            let untyped = serde_json::json!({"jobId": id});
            let refused = s.append_events(&id, by, &[&start, &untyped, &end]);
            assert!(
                matches!(refused, Err(StoreError::Invalid(_))),
                "{refused:?}"
            );
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(s.flush())
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let r = s.get(&id).unwrap();
        assert_eq!(
            r.events, 3,
            "the start before the refused event stays recorded"
        );
        assert_eq!(r.outcome, Some(Outcome::End));
        assert_eq!(r.result, Some(serde_json::json!(7)));
        let types: Vec<String> = s
            .events_from(&id, 0)
            .unwrap()
            .iter()
            .map(|(_, t)| serde_json::from_str::<Value>(t).unwrap()["type"].to_string())
            .collect();
        assert_eq!(types, ["\"start\"", "\"end\"", "\"start\""]);
    }

    #[test]
    fn a_claim_that_announces_records_each_jobs_claimed_event_durably() {
        let dir = tempfile::tempdir().unwrap();
        let data = serde_json::json!({"agent_version": "9.9"});
        let (a, b);
        {
            let s = Store::open(dir.path()).unwrap();
            a = s.submit(job("echo")).unwrap().id;
            b = s.submit(job("echo")).unwrap().id;
            let got = s
                .claim_announced(
                    "default",
                    &Offer::default(),
                    "w",
                    4,
                    DEFAULT_LEASE,
                    Some(&data),
                )
                .unwrap();
            assert_eq!(got.len(), 2);
            assert!(got.iter().all(|r| r.events == 1), "{got:?}");
            // The claimed job's own lease reports on: the next event is accepted after it.
            let lease = got[0].lease.clone().unwrap().id;
            let start = serde_json::json!({"type": "start", "jobId": a, "data": {}});
            assert_eq!(
                s.append_event(&a, Reporter::Lease(&lease), &start).unwrap(),
                1
            );
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(s.flush())
                .unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        for id in [&a, &b] {
            let events = s.events_from(id, 0).unwrap();
            let first: Value = serde_json::from_str(&events[0].1).unwrap();
            assert_eq!(first["type"], "claimed", "{events:?}");
            assert_eq!(first["jobId"], id.as_str());
            assert_eq!(first["data"], data);
        }
        assert_eq!(s.events_from(&a, 0).unwrap().len(), 2);
        // Without the announcement a claim records no event.
        s.submit(job("echo")).unwrap();
        let got = s.claim("default", "w", 4, DEFAULT_LEASE).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].events, 0);
    }
}
