//! The job queue as a pure state machine (docs/control-plane.md): jobs, leases, attempts, the
//! dead-letter list, cancellation and which lease may report a job's events. Every decision is
//! here, with the time and the new lease ids passed in; each operation returns the records it
//! changed so the store ([`super::store`]) can persist exactly those. It must never do I/O, read
//! a clock or draw random numbers.
//!
//! The lease fences a job: only the current lease may renew it, report its events or settle it.
//! The final state of an acknowledged job is the outcome the settling lease itself reported (in
//! its settlement, or else by its own terminal event), never another lease's.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{Map, Value};

use super::record::{rfc3339_ms, JobRecord, LeaseInfo, LeaseSettle, NewJob, Outcome, QueueState};
use super::store::StoreError;

/// Deliveries of a job before an expired lease dead-letters it, unless it says `maxAttempts`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Who reports a job event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reporter<'a> {
    /// A worker naming its lease: accepted only while that lease is the job's current one.
    Lease(&'a str),
    /// Someone naming no lease (a producer's note): accepted only while the job waits in the
    /// queue, so no worker's attempt can be overwritten by it.
    Unleased,
    /// The control plane itself (the `cancelled` event of a job cancelled in the queue).
    Plane,
}

/// The queue: every job, and the ready ones in order.
/// What a claiming node offers (docs/transports.md#routing): its routing tags and its name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Offer {
    pub tags: Vec<String>,
    pub node: Option<String>,
}

#[derive(Debug, Default)]
pub struct Queue {
    jobs: HashMap<String, JobRecord>,
    /// Ready jobs: (not before, submission order, id).
    ready: BTreeSet<(u64, u64, String)>,
    next_seq: u64,
}

impl Queue {
    /// The queue of these persisted records (in any order).
    pub fn from_records(records: impl IntoIterator<Item = JobRecord>) -> Self {
        let mut q = Queue::default();
        for r in records {
            q.next_seq = q.next_seq.max(r.seq + 1);
            if r.state == QueueState::Queued {
                q.ready.insert((r.not_before_ms, r.seq, r.id.clone()));
            }
            q.jobs.insert(r.id.clone(), r);
        }
        q
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub fn get(&self, id: &str) -> Result<&JobRecord, StoreError> {
        self.jobs
            .get(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Jobs, newest first, optionally of one state.
    pub fn list(&self, state: Option<QueueState>, limit: usize) -> Vec<JobRecord> {
        let mut all: Vec<&JobRecord> = self
            .jobs
            .values()
            .filter(|r| state.is_none_or(|s| r.state == s))
            .collect();
        all.sort_by_key(|r| std::cmp::Reverse(r.seq));
        all.into_iter().take(limit).cloned().collect()
    }

    /// The earliest time a queued job becomes ready.
    pub fn next_ready_ms(&self) -> Option<u64> {
        self.ready.first().map(|k| k.0)
    }

    fn get_mut(&mut self, id: &str) -> Result<&mut JobRecord, StoreError> {
        self.jobs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }

    /// Puts a job (back) in the queue, ready at `at`.
    fn enqueue(&mut self, id: &str, at: u64) {
        if let Some(r) = self.jobs.get_mut(id) {
            r.state = QueueState::Queued;
            r.lease = None;
            r.not_before_ms = at;
            self.ready.insert((at, r.seq, r.id.clone()));
        }
    }

    /// The job, if `lease_id` is its current lease.
    fn held(&mut self, id: &str, lease_id: &str) -> Result<&mut JobRecord, StoreError> {
        let r = self.get_mut(id)?;
        match &r.lease {
            Some(l) if l.id == lease_id && r.state == QueueState::Leased => Ok(r),
            _ => Err(StoreError::LeaseLost(id.to_string())),
        }
    }

    /// Adds a job; `id` is used when the producer named none.
    pub fn submit(&mut self, new: NewJob, id: String, now: u64) -> Result<JobRecord, StoreError> {
        let id = new.id.clone().filter(|s| !s.is_empty()).unwrap_or(id);
        citadel_transports::JobId::new(id.clone())
            .map_err(|e| StoreError::Invalid(format!("invalid id: {e}")))?;
        if new.job_type.trim().is_empty() {
            return Err(StoreError::Invalid("`type` must not be empty".into()));
        }
        if self.jobs.contains_key(&id) {
            return Err(StoreError::Exists(id));
        }
        let max_attempts = new
            .max_attempts
            .or_else(|| payload_max_attempts(&new.payload))
            .unwrap_or(DEFAULT_MAX_ATTEMPTS)
            .max(1);
        let seq = self.next_seq;
        self.next_seq += 1;
        let r = JobRecord::new(id.clone(), new, max_attempts, seq, rfc3339_ms(now));
        self.jobs.insert(id.clone(), r);
        self.enqueue(&id, 0);
        Ok(self.jobs[&id].clone())
    }

    /// Leases up to `max` ready jobs of organization `org` to `worker`; `lease_id` draws each new
    /// lease's id. Another organization's ready jobs keep their place, and so do jobs that
    /// require tags or a node (a claim with no [`Offer`] meets none).
    pub fn claim(
        &mut self,
        org: &str,
        worker: &str,
        max: usize,
        lease: Duration,
        now: u64,
        lease_id: impl FnMut() -> String,
    ) -> Vec<JobRecord> {
        let offer = Offer::default();
        self.claim_offered(org, &offer, worker, max, lease, now, lease_id)
    }

    /// [`Queue::claim`] for a node offering `offer`: only jobs whose requirements it meets.
    #[allow(clippy::too_many_arguments)]
    pub fn claim_offered(
        &mut self,
        org: &str,
        offer: &Offer,
        worker: &str,
        max: usize,
        lease: Duration,
        now: u64,
        mut lease_id: impl FnMut() -> String,
    ) -> Vec<JobRecord> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(first) = self
                .ready
                .iter()
                .take_while(|k| k.0 <= now)
                .find(|k| {
                    self.jobs
                        .get(&k.2)
                        .is_none_or(|r| r.org == org && r.fits(&offer.tags, offer.node.as_deref()))
                })
                .cloned()
            else {
                break;
            };
            self.ready.remove(&first);
            let Some(r) = self.jobs.get_mut(&first.2) else {
                continue;
            };
            if r.state != QueueState::Queued {
                continue;
            }
            r.state = QueueState::Leased;
            r.attempts += 1;
            r.lease = Some(LeaseInfo {
                id: lease_id(),
                worker: worker.to_string(),
                expires_ms: now + lease.as_millis() as u64,
                length_ms: Some(lease.as_millis() as u64),
            });
            r.updated_at = rfc3339_ms(now);
            out.push(r.clone());
        }
        out
    }

    /// Restarts the current lease; the job (its `cancel_requested` included).
    pub fn renew(
        &mut self,
        id: &str,
        lease_id: &str,
        lease: Duration,
        now: u64,
    ) -> Result<JobRecord, StoreError> {
        let r = self.held(id, lease_id)?;
        if let Some(l) = r.lease.as_mut() {
            l.expires_ms = now + lease.as_millis() as u64;
            l.length_ms = Some(lease.as_millis() as u64);
        }
        Ok(r.clone())
    }

    /// Applies the current lease's settlement. The settling lease's repeat of a final job's
    /// settlement is answered with the job (idempotent); any other lease's is refused.
    pub fn settle(
        &mut self,
        id: &str,
        lease_id: &str,
        how: LeaseSettle,
        now: u64,
    ) -> Result<JobRecord, StoreError> {
        let r = self.get(id)?;
        if r.state.is_final() {
            return match &r.settled_by {
                Some(by) if by == lease_id => Ok(r.clone()),
                _ => Err(StoreError::LeaseLost(id.to_string())),
            };
        }
        let r = self.held(id, lease_id)?;
        r.updated_at = rfc3339_ms(now);
        r.lease = None;
        let requeue_at = match how {
            LeaseSettle::Ack { outcome } => {
                let own = r.outcome_of(lease_id);
                r.state = outcome
                    .or(own)
                    .map_or(QueueState::Succeeded, Outcome::state);
                r.settled_by = Some(lease_id.to_string());
                None
            }
            LeaseSettle::Retry { delay, error } => {
                r.errors.extend(error);
                Some(now + delay.as_millis() as u64)
            }
            LeaseSettle::DeadLetter { reason, errors } => {
                r.state = QueueState::Dead;
                r.dead_reason = Some(reason);
                r.settled_by = Some(lease_id.to_string());
                if !errors.is_empty() {
                    r.errors = errors;
                }
                None
            }
            LeaseSettle::Release => {
                r.attempts = r.attempts.saturating_sub(1);
                Some(0)
            }
        };
        if let Some(at) = requeue_at {
            self.enqueue(id, at);
        }
        Ok(self.jobs[id].clone())
    }

    /// The plain poller's final word (docs/wire-format.md#nexus-http: no lease is named); a final
    /// job stays as it is. Whether anything changed.
    pub fn report_status(
        &mut self,
        id: &str,
        success: bool,
        output: Option<String>,
        now: u64,
    ) -> Result<Option<JobRecord>, StoreError> {
        let r = self.get_mut(id)?;
        if r.state.is_final() {
            return Ok(None);
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
            self.ready.retain(|k| k.2 != id);
        }
        Ok(Some(r))
    }

    /// Checks who reports an event of type `ty` and records what it says about the outcome;
    /// returns the job (its `events` is the new event's index + 1).
    pub fn event(
        &mut self,
        id: &str,
        by: Reporter<'_>,
        ty: &str,
        data: Option<&Value>,
    ) -> Result<JobRecord, StoreError> {
        let r = self.get_mut(id)?;
        let allowed = match by {
            Reporter::Lease(l) => {
                r.state == QueueState::Leased && r.lease.as_ref().is_some_and(|c| c.id == l)
            }
            Reporter::Unleased => r.state == QueueState::Queued,
            Reporter::Plane => true,
        };
        if !allowed {
            return Err(StoreError::LeaseLost(id.to_string()));
        }
        if let Some(outcome) = Outcome::of_event(ty) {
            match outcome {
                Outcome::End => {
                    r.result = data.and_then(|d| d.get("result")).cloned();
                    r.error = None;
                }
                Outcome::Error => {
                    r.error = data
                        .and_then(|d| d.get("error"))
                        .and_then(Value::as_str)
                        .map(str::to_string);
                }
                Outcome::Cancelled => {}
            }
            r.outcome = Some(outcome);
            r.outcome_lease = match by {
                Reporter::Lease(l) => Some(l.to_string()),
                _ => None,
            };
        }
        r.events += 1;
        Ok(r.clone())
    }

    /// Cancels a job: a queued one ends at once (`Ok(Some)`: the caller records its `cancelled`
    /// event); a leased one is flagged for its worker.
    pub fn cancel(&mut self, id: &str, now: u64) -> Result<(JobRecord, bool), StoreError> {
        let r = self.get_mut(id)?;
        let ended = match r.state {
            QueueState::Queued => {
                r.state = QueueState::Cancelled;
                r.cancel_requested = true;
                r.updated_at = rfc3339_ms(now);
                true
            }
            QueueState::Leased => {
                r.cancel_requested = true;
                false
            }
            _ => false,
        };
        let r = r.clone();
        if ended {
            self.ready.retain(|k| k.2 != id);
        }
        Ok((r, ended))
    }

    /// Puts a dead-lettered job back in the queue with its attempts reset.
    pub fn requeue(&mut self, id: &str, now: u64) -> Result<JobRecord, StoreError> {
        let r = self.get_mut(id)?;
        if r.state != QueueState::Dead {
            return Err(StoreError::Invalid(format!(
                "job {id} is not dead-lettered (it is {:?})",
                r.state
            )));
        }
        r.attempts = 0;
        r.dead_reason = None;
        r.outcome = None;
        r.outcome_lease = None;
        r.settled_by = None;
        r.updated_at = rfc3339_ms(now);
        self.enqueue(id, 0);
        Ok(self.jobs[id].clone())
    }

    /// Expired leases: a job whose expiring lease reported its `end` (the success a worker
    /// records before its journal holds it) has succeeded with that result, settled by that
    /// lease (its late settlement is answered as a repeat), and is never run again; any other
    /// goes back to the queue (the attempt counted at the claim stays counted), or to the
    /// dead-letter list once it has had all its attempts. The changed jobs.
    pub fn expire(&mut self, now: u64) -> Vec<JobRecord> {
        let mut expired: Vec<String> = self
            .jobs
            .values()
            .filter(|r| {
                r.state == QueueState::Leased
                    && r.lease.as_ref().is_some_and(|l| l.expires_ms <= now)
            })
            .map(|r| r.id.clone())
            .collect();
        expired.sort();
        let mut out = Vec::with_capacity(expired.len());
        for id in expired {
            let Some(r) = self.jobs.get_mut(&id) else {
                continue;
            };
            let (lease, worker) = r.lease.take().map(|l| (l.id, l.worker)).unwrap_or_default();
            r.updated_at = rfc3339_ms(now);
            if r.outcome_of(&lease) == Some(Outcome::End) {
                // The attempt recorded its success before its worker journaled it: done.
                r.state = QueueState::Succeeded;
                r.settled_by = Some(lease);
                tracing::info!(job_id = %id, attempts = r.attempts, %worker, "lease expired after its recorded success; succeeded");
                out.push(r.clone());
                continue;
            }
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
            } else {
                tracing::info!(job_id = %id, attempts = r.attempts, %worker, "lease expired; job back in the queue");
                self.enqueue(&id, 0);
            }
            out.push(self.jobs[&id].clone());
        }
        out
    }

    /// Retention ([`Retention`]): removes the finished jobs (succeeded, failed, cancelled) that
    /// finished at least `max_age` before `now`, then the oldest finished ones beyond
    /// `max_finished`; at most `limit` of them (the oldest: the next call goes on); returns their
    /// ids, oldest first. A queued, leased or dead-lettered job is never removed.
    pub fn retire(&mut self, policy: &Retention, now: u64, limit: usize) -> Vec<String> {
        let mut finished: Vec<(u64, u64, &str)> = self
            .jobs
            .values()
            .filter(|r| r.state.is_final() && r.state != QueueState::Dead)
            .map(|r| (finished_ms(r), r.seq, r.id.as_str()))
            .collect();
        finished.sort_unstable();
        let cutoff = policy
            .max_age
            .and_then(|age| now.checked_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
        let over = finished
            .len()
            .saturating_sub(policy.max_finished.unwrap_or(usize::MAX));
        let gone: Vec<String> = finished
            .iter()
            .enumerate()
            .take_while(|(i, (at, _, _))| *i < over || cutoff.is_some_and(|c| *at <= c))
            .take(limit)
            .map(|(_, (_, _, id))| id.to_string())
            .collect();
        for id in &gone {
            self.jobs.remove(id);
        }
        gone
    }

    /// How many jobs are in each state.
    pub fn count_by_state(&self) -> Vec<(QueueState, u64)> {
        let mut n: Vec<(QueueState, u64)> = Vec::new();
        for r in self.jobs.values() {
            match n.iter_mut().find(|(s, _)| *s == r.state) {
                Some((_, c)) => *c += 1,
                None => n.push((r.state, 1)),
            }
        }
        n
    }

    /// Removes a dead-lettered job for good (`citadel jobs purge`); any other job is refused
    /// with [`StoreError::Invalid`] (the API answers 409).
    pub fn purge(&mut self, id: &str) -> Result<JobRecord, StoreError> {
        let r = self.get(id)?;
        if r.state != QueueState::Dead {
            return Err(StoreError::Invalid(format!(
                "job {id} is not dead-lettered (it is {}); only a dead-lettered job can be purged",
                format!("{:?}", r.state).to_lowercase()
            )));
        }
        self.jobs
            .remove(id)
            .ok_or_else(|| StoreError::NotFound(id.to_string()))
    }
}

/// `payload.maxAttempts`, a number or a string of one.
fn payload_max_attempts(payload: &Map<String, Value>) -> Option<u32> {
    payload.get("maxAttempts").and_then(|v| match v {
        Value::Number(n) => n.as_u64().map(|n| n.min(u32::MAX as u64) as u32),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    })
}

/// What [`Queue::retire`] keeps: finished jobs younger than `max_age`, at most `max_finished` of
/// them. `None`: no limit of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub max_age: Option<Duration>,
    pub max_finished: Option<usize>,
}

impl Default for Retention {
    /// As the worker's journal: a week; and at most 100,000 finished jobs.
    fn default() -> Self {
        Self {
            max_age: Some(Duration::from_secs(7 * 24 * 3600)),
            max_finished: Some(100_000),
        }
    }
}

/// When a final job finished: its `updated_at` (0, the oldest, when unreadable).
pub fn finished_ms(r: &JobRecord) -> u64 {
    humantime::parse_rfc3339_weak(&r.updated_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
