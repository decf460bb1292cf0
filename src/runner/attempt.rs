//! One delivery, start to settlement. It holds the delivery ([`super::hold`]: its lease renewed
//! and its end owned until the transport is done with it) and carries out the admission decision
//! ([`super::admission`]): a delivery of a job that another delivery is working here waits at the
//! gate ([`super::gate`]) and is then decided from the journal; a job the journal shows running
//! with nothing here is handed back unjournaled; anything else is journaled first, then a job the
//! journal shows as succeeded is acked again with its recorded result re-published and never run
//! (docs/journal.md#invariants), a job the journal dead-lettered is dead-lettered again, a job for
//! another node is skipped, and a job past its attempts or of an unknown type is dead-lettered
//! without running. An admitted job the producer cancelled is not started, nor one whose lease
//! cannot be confirmed. Otherwise the handler runs under supervision ([`super::supervise`]:
//! cancellation, deadline, fence, drain, chunks); once it returned the delivery's run slot is
//! traded for a settlement place ([`super::slot`]) so the next job starts meanwhile; its outcome is journaled and settled through
//! [`super::outcome`] and the one settle path. This module must never settle before journaling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_journal::{EventKind, NewEvent};
use citadel_transports::{Delivery, EventData, Malformed, SettleContext, Settlement, WireEvent};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::admission::{self, Admission, Facts, Verdict};
use super::hold::Hold;
use super::outcome::Ran;
use super::settle::SettleTarget;
use super::slot::Slot;
use super::Shared;
use crate::chaos::Point;
use crate::handlers::Handler;

impl Shared {
    pub(crate) async fn publish(&self, job: &citadel_transports::Job, data: EventData) {
        let event = WireEvent::for_job(job, self.meta.clone(), data);
        if let Err(e) = self.source.publish(&event).await {
            tracing::warn!(job_id = %job.id, event = event.event_type(), error = %e, "could not publish a job event");
        }
    }

    /// Publishes `events` of `job` in order, together where the transport can; a failure is
    /// logged.
    async fn publish_all(&self, job: &citadel_transports::Job, events: &[WireEvent]) {
        if let Err(e) = self.source.publish_all(events).await {
            tracing::warn!(job_id = %job.id, error = %e, "could not publish the job's events");
        }
    }

    /// A delivery that is not a job: reported and dead-lettered; it never stalls the queue.
    pub(crate) async fn malformed(&self, m: Malformed) {
        tracing::warn!(receipt = %m.receipt, job_id = ?m.job_id, reason = %m.reason, "malformed delivery; dead-lettering it");
        if let Some(id) = &m.job_id {
            let event = WireEvent::new(
                id.clone(),
                self.meta.clone(),
                EventData::Error {
                    error: format!("malformed job: {}", m.reason),
                    recoverable: false,
                },
            );
            if let Err(e) = self.source.publish(&event).await {
                tracing::warn!(job_id = %id, error = %e, "could not publish the error event");
            }
        }
        self.counters
            .dead_lettered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let ctx = SettleContext {
            job: None,
            attempts: m.attempt,
            errors: vec![m.reason.clone()],
            worker_id: self.config.worker_id.clone(),
        };
        let settlement = Settlement::DeadLetter {
            reason: format!("malformed: {}", m.reason),
        };
        let hold = self.hold(m.receipt.clone(), m.job_id.clone());
        if self
            .send_settlement(&m.receipt, &settlement, &ctx, m.job_id.as_ref())
            .await
        {
            hold.settled();
        }
    }

    fn hold(
        &self,
        receipt: citadel_transports::Receipt,
        job_id: Option<citadel_transports::JobId>,
    ) -> Hold {
        Hold::new(self.source.clone(), receipt, job_id, self.counters.clone())
    }

    /// Holds the delivery, decides its admission ([`admission::decide`]) and carries it out:
    /// a delivery of a job in flight here waits for that one to end and is decided again; a
    /// duplicate of a job the journal shows running is handed back unjournaled; anything else is
    /// journaled as received first.
    pub(crate) async fn deliver(
        self: &Arc<Self>,
        d: Delivery,
        drain: CancellationToken,
        mut slot: Slot,
    ) {
        let Delivery { mut job, receipt } = d;
        crate::chaos::point(Point::AfterClaim, &job);
        let delivery_id = receipt.id().to_string();
        let hold = self.hold(receipt, Some(job.id.clone()));
        let mut pass = self.gate.try_enter(&job.id);
        let (attempt, verdict) = loop {
            let state = self.journal.state(&job.id);
            let facts = Facts {
                state: state.as_ref(),
                in_flight_here: pass.is_none(),
                job: &job,
                node_id: &self.meta.node_id,
                node_name: &self.meta.node_name,
                default_max_attempts: self.config.max_attempts,
            };
            match admission::decide(&facts, self.registry.get(&job.job_type)) {
                Admission::WaitForFirst => {
                    tracing::info!(job_id = %job.id, receipt = %hold.receipt(), "another delivery of this job is in flight here; waiting for it to end");
                    tokio::select! {
                        p = self.gate.enter(&job.id) => pass = Some(p),
                        () = drain.cancelled() => return self.hand_back(&job, &hold, Settlement::Release).await,
                        () = hold.fence().cancelled() => return,
                    }
                }
                Admission::DuplicateRunning => {
                    let delay = self.config.lease;
                    return self
                        .hand_back(&job, &hold, Settlement::Retry { delay })
                        .await;
                }
                Admission::Receive { attempt, verdict } => break (attempt, verdict),
            }
        };
        let _pass = pass;
        job.attempt = attempt;
        if !self.journal_received(&job, &delivery_id) {
            return;
        }
        let s = SettleTarget {
            job: &job,
            hold: &hold,
            delivery_id: &delivery_id,
        };
        match verdict {
            Verdict::AlreadySucceeded => self.ack_recorded(&s).await,
            Verdict::AlreadyDeadLettered => {
                let last = self
                    .journal
                    .state(&job.id)
                    .and_then(|st| st.errors.last().cloned());
                let error = format!(
                    "dead-lettered earlier on this node: {}",
                    last.as_deref().unwrap_or("no error recorded")
                );
                tracing::info!(job_id = %job.id, "redelivered job was dead-lettered; dead-lettering it again without running");
                self.give_up(&s, error, false, job.attempt).await;
            }
            Verdict::OtherNode { target } => {
                let reason = format!("addressed to node `{target}`");
                tracing::info!(job_id = %job.id, target = %target, "skipping a job for another node");
                self.settle(&s, EventKind::Skipped { reason }, Settlement::Ack)
                    .await;
            }
            Verdict::AttemptsExhausted { max } => {
                let error = format!(
                    "delivered {} times without finishing (max {max} attempts); the job may crash the worker",
                    job.attempt
                );
                self.give_up(&s, error, false, max).await;
            }
            Verdict::UnknownType { max_attempts } => {
                let error = format!(
                    "unknown job type `{}`; this node supports: {}",
                    job.job_type,
                    self.registry.names().join(", ")
                );
                self.give_up(&s, error, false, max_attempts).await;
            }
            Verdict::Run {
                max_attempts,
                handler,
            } => {
                self.start(&s, handler, max_attempts, drain, &mut slot)
                    .await
            }
        }
    }

    /// Hands back, unjournaled, a delivery that must not be worked now: a duplicate of a job the
    /// journal shows running (retried after a lease, when the journal will know how the run
    /// ended), or one still waiting for its twin when the drain timeout struck (released).
    async fn hand_back(&self, job: &citadel_transports::Job, hold: &Hold, settlement: Settlement) {
        tracing::warn!(job_id = %job.id, receipt = %hold.receipt(), settlement = settlement.name(),
            "handing back a delivery of a job that cannot be worked now");
        let ctx = SettleContext {
            job: Some(job),
            attempts: job.attempt,
            errors: vec![],
            worker_id: self.config.worker_id.clone(),
        };
        if self
            .send_settlement(hold.receipt(), &settlement, &ctx, Some(&job.id))
            .await
        {
            hold.settled();
        }
    }

    /// Journals the delivery (`received`, buffered); false if the journal refused it, which
    /// leaves the delivery for redelivery.
    fn journal_received(&self, job: &citadel_transports::Job, delivery_id: &str) -> bool {
        let received = self.journal.append_buffered(
            NewEvent::new(
                job.id.clone(),
                self.source.name(),
                EventKind::Received { job: job.clone() },
            )
            .delivery(delivery_id),
        );
        if let Err(e) = received {
            tracing::error!(job_id = %job.id, error = %e, "cannot journal the delivery; leaving it for redelivery");
            return false;
        }
        true
    }

    /// Effectively-once: a job that already succeeded is acked with its recorded result.
    async fn ack_recorded(&self, s: &SettleTarget<'_>) {
        let result = self
            .journal
            .recorded_result(&s.job.id)
            .ok()
            .flatten()
            .unwrap_or(Value::Null);
        tracing::info!(job_id = %s.job.id, "redelivered job already succeeded; acking it without running");
        self.counters
            .deduplicated
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ack_with_result(s, result).await;
    }

    /// Runs an admitted job: `claimed` (the producer's cancellation checked in the same round
    /// trip), `started` journaled, `start` published, the handler, then its outcome settled.
    async fn start(
        &self,
        s: &SettleTarget<'_>,
        handler: Arc<dyn Handler>,
        max_attempts: u32,
        drain: CancellationToken,
        slot: &mut Slot,
    ) {
        let job = s.job;
        let claimed = WireEvent::for_job(
            job,
            self.meta.clone(),
            EventData::Claimed {
                agent_version: env!("CARGO_PKG_VERSION").into(),
            },
        );
        let started_event = NewEvent::new(
            job.id.clone(),
            self.source.name(),
            EventKind::Started {
                attempt: job.attempt,
            },
        )
        .delivery(s.delivery_id);
        // A job cancelled before it started reads `claimed, cancelled`
        // (docs/wire-format.md#job-events order) and never starts.
        if matches!(self.source.is_cancelled(&job.id).await, Ok(true)) {
            self.publish_all(job, &[claimed]).await;
            self.cancelled(s, "cancelled by the producer before it started")
                .await;
            return;
        }
        // Self-fencing: the lease must be confirmed this worker's before the handler starts.
        if !s.hold.confirm().await {
            self.publish_all(job, &[claimed]).await;
            tracing::warn!(job_id = %job.id, "the lease could not be confirmed; not starting the job");
            return;
        }
        // `started` is flushed at once but not awaited: the handler does not wait for the disk
        // (dispatch latency), and a crash in the first millisecond of a run loses only the
        // record that it started; the broker's delivery count still counts the attempt.
        // A refused `started` (another delivery of the job ran or settled it meanwhile, e.g.
        // while the cancellation check waited on a broker that was down) publishes no `start`:
        // the handler does not run, and a `start` would claim an execution that never happened.
        if let Err(e) = self.journal.append_flushing(started_event) {
            self.publish_all(job, &[claimed]).await;
            tracing::error!(job_id = %job.id, error = %e, "cannot journal the start; leaving the job for redelivery");
            return;
        }
        let start = WireEvent::for_job(
            job,
            self.meta.clone(),
            EventData::Start {
                message: format!("running {} (attempt {})", job.job_type, job.attempt),
            },
        );
        // `claimed` and `start` travel together (one script call on Redis).
        self.publish_all(job, &[claimed, start]).await;
        crate::chaos::point(Point::AfterJournal, job);
        tracing::debug!(job_id = %job.id, attempt = job.attempt, job_type = %job.job_type, "started");

        let timeout = self.config.timeout_for(job);
        self.record_start(job);
        let begun = Instant::now();
        let (outcome, stop) = self
            .run_handler(job, s.hold.fence(), s.delivery_id, handler, timeout, drain)
            .await;
        self.counters.jobs.duration(&job.job_type, begun.elapsed());
        // The next job may be claimed now; this one's settlement goes on beside it.
        slot.handler_returned().await;
        let ran = Ran {
            timeout,
            elapsed_ms: begun.elapsed().as_millis() as u64,
            max_attempts,
        };
        self.settle_outcome(s, outcome, stop, ran).await;
    }

    /// Counts a redelivery, and the queue wait of a first attempt whose producer said when it
    /// enqueued the job (`enqueuedAt`: RFC 3339, or Unix seconds or milliseconds).
    fn record_start(&self, job: &citadel_transports::Job) {
        use std::sync::atomic::Ordering::Relaxed;
        if job.attempt > 1 {
            self.counters.jobs.redeliveries.fetch_add(1, Relaxed);
            return;
        }
        let Some(enqueued) = job.enqueued_at.as_deref().and_then(enqueued_ms) else {
            return;
        };
        let now = citadel_journal::now_ms();
        if now >= enqueued {
            self.counters
                .jobs
                .queue_wait
                .observe(Duration::from_millis(now - enqueued));
        }
    }
}

/// `enqueuedAt` as Unix milliseconds: an RFC 3339 time, or a number of seconds or milliseconds.
fn enqueued_ms(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Ok(n) = t.parse::<f64>() {
        if !n.is_finite() || n <= 0.0 {
            return None;
        }
        // Before 2001-09-09 in milliseconds is after year 33,000 in seconds: the size decides.
        return Some(if n < 1e12 {
            (n * 1000.0) as u64
        } else {
            n as u64
        });
    }
    let at = humantime::parse_rfc3339_weak(t).ok()?;
    Some(at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::enqueued_ms;

    #[test]
    fn enqueued_at_parses_in_every_producer_format() {
        assert_eq!(enqueued_ms("2026-11-22T10:00:00Z"), Some(1_795_341_600_000));
        assert_eq!(enqueued_ms("1795341600"), Some(1_795_341_600_000));
        assert_eq!(enqueued_ms("1795341600123"), Some(1_795_341_600_123));
        assert_eq!(enqueued_ms("soon"), None);
        assert_eq!(enqueued_ms("-5"), None);
    }
}
