//! How a delivery's outcome becomes its settlement: the handler's run (succeeded, failed, timed
//! out, cancelled, interrupted by the drain or fenced), a refusal without running (attempts
//! exhausted, unknown type, dead-lettered before), a producer's cancellation and a success acked
//! from the journal. Each journals the terminal event, then settles through the one settle path
//! ([`super::settle`]), which publishes `end`, `error` or `cancelled` only once the settlement is
//! journaled; a success's completion record goes to the transport before the success is
//! journaled (`record_success`). A fenced run is journaled `interrupted` and settles nothing. This module decides
//! which settlement follows which outcome; it never talks to a transport except through the
//! settle path.

use std::time::Duration;

use citadel_journal::{EventKind, NewEvent};
use citadel_transports::{EventData, Settlement};
use serde_json::Value;

use super::hold::Fenced;
use super::settle::SettleTarget;
use super::supervise::Stop;
use super::Shared;
use crate::chaos::Point;
use crate::handlers::HandlerError;

/// What a finished run's settlement needs to know besides its outcome.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ran {
    /// The deadline the handler ran under.
    pub timeout: Option<Duration>,
    pub elapsed_ms: u64,
    pub max_attempts: u32,
}

impl Shared {
    /// Journals how the handler's run ended and settles the delivery accordingly.
    pub(super) async fn settle_outcome(
        &self,
        s: &SettleTarget<'_>,
        outcome: Result<Value, HandlerError>,
        stop: Option<Stop>,
        ran: Ran,
    ) {
        let (job, delivery_id) = (s.job, s.delivery_id);
        match (outcome, stop) {
            (_, Some(Stop::Fenced)) => {
                // Another worker may own the delivery: record how this attempt ended, publish and
                // settle nothing; the hold hands the receipt back to its lease.
                let reason = match s.hold.fenced() {
                    Some(Fenced::Unconfirmed) => "fenced: no lease renewal succeeded for most of the lease; another worker may own the job now",
                    _ => "the lease was lost: another worker owns the job now",
                };
                self.append_quiet(
                    job,
                    delivery_id,
                    EventKind::Interrupted {
                        reason: reason.to_string(),
                    },
                );
            }
            (Ok(result), _) => {
                self.counters
                    .succeeded
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The transport records the success before the journal holds it: once
                // journaled (any other job's flush may make it durable at once), a crash must
                // not leave another worker free to run the job again.
                self.record_success(job, &result).await;
                self.append_quiet(
                    job,
                    delivery_id,
                    EventKind::Succeeded {
                        result: result.clone(),
                    },
                );
                crate::chaos::point(Point::AfterResult, job);
                // `end` goes out once the success is durable: a producer that saw `end` knows a
                // redelivery will not run the job again (the chaos suite's checker relies on it).
                self.ack_with_result(s, result).await;
            }
            (Err(_), Some(Stop::Drain)) => {
                let reason =
                    "the worker shut down before the job finished (drain timeout)".to_string();
                self.append_quiet(job, delivery_id, EventKind::Interrupted { reason });
                self.settle(s, EventKind::Released, Settlement::Release)
                    .await;
            }
            (Err(_), Some(Stop::Producer)) => {
                self.cancelled(s, "cancelled by the producer").await;
            }
            (Err(_), Some(Stop::Deadline)) => {
                let error = format!(
                    "timed out after {}",
                    humantime::format_duration(ran.timeout.unwrap_or_default())
                );
                let after_ms = ran.elapsed_ms;
                self.append_quiet(job, delivery_id, EventKind::TimedOut { after_ms });
                self.fail(s, error, true, ran.max_attempts).await;
            }
            (Err(e), None) => {
                self.append_quiet(
                    job,
                    delivery_id,
                    EventKind::Failed {
                        error: e.message.clone(),
                        retryable: e.retryable,
                    },
                );
                self.fail(s, e.message, e.retryable, ran.max_attempts).await;
            }
        }
    }

    /// A failed or timed-out attempt: retry after the backoff while attempts remain, else
    /// dead-letter. The terminal event is already journaled.
    async fn fail(&self, s: &SettleTarget<'_>, error: String, retryable: bool, max_attempts: u32) {
        let job = s.job;
        if retryable && job.attempt < max_attempts {
            let delay = self.config.retry.delay(job.attempt.saturating_sub(1));
            tracing::info!(job_id = %job.id, attempt = job.attempt, error = %error, retry_in_ms = delay.as_millis() as u64, "attempt failed; retrying");
            self.counters
                .retried
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let event = EventKind::Retried {
                delay_ms: delay.as_millis() as u64,
            };
            let error = EventData::Error {
                error,
                recoverable: true,
            };
            self.settle_announcing(s, event, Settlement::Retry { delay }, Some(error))
                .await;
        } else {
            let reason = if retryable {
                format!("gave up after {} attempts: {error}", job.attempt)
            } else {
                format!("permanent failure: {error}")
            };
            tracing::warn!(job_id = %job.id, attempt = job.attempt, reason = %reason, "dead-lettering");
            self.counters
                .failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.counters
                .dead_lettered
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let event = EventKind::DeadLettered {
                reason: reason.clone(),
            };
            let error = EventData::Error {
                error,
                recoverable: false,
            };
            self.settle_announcing(s, event, Settlement::DeadLetter { reason }, Some(error))
                .await;
        }
    }

    /// Acks a succeeded job; its `end` (with `result`) is published once the ack is journaled.
    pub(super) async fn ack_with_result(&self, s: &SettleTarget<'_>, result: Value) {
        let end = Some(EventData::End { result });
        self.settle_announcing(s, EventKind::Acked, Settlement::Ack, end)
            .await;
    }

    /// Refuses a delivery without running it: a failed event, then the dead-letter queue.
    pub(super) async fn give_up(
        &self,
        s: &SettleTarget<'_>,
        error: String,
        retryable: bool,
        max_attempts: u32,
    ) {
        self.append_quiet(
            s.job,
            s.delivery_id,
            EventKind::Failed {
                error: error.clone(),
                retryable,
            },
        );
        self.fail(s, error, false, max_attempts).await;
    }

    /// The producer cancelled the job: a `cancelled` event, the terminal event, then the ack.
    pub(super) async fn cancelled(&self, s: &SettleTarget<'_>, reason: &str) {
        self.counters
            .cancelled
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let announce = EventData::Cancelled {
            reason: reason.to_string(),
        };
        let terminal = EventKind::Cancelled {
            reason: reason.to_string(),
        };
        self.settle_terminal(s, terminal, Settlement::Ack, Some(announce))
            .await;
    }

    /// Journals `terminal`, then settles with `settlement`'s event, announcing `announce` once
    /// the settlement is journaled.
    async fn settle_terminal(
        &self,
        s: &SettleTarget<'_>,
        terminal: EventKind,
        settlement: Settlement,
        announce: Option<EventData>,
    ) {
        self.append_quiet(s.job, s.delivery_id, terminal);
        let event = match &settlement {
            Settlement::Ack => EventKind::Acked,
            Settlement::Release => EventKind::Released,
            Settlement::Retry { delay } => EventKind::Retried {
                delay_ms: delay.as_millis() as u64,
            },
            Settlement::DeadLetter { reason } => EventKind::DeadLettered {
                reason: reason.clone(),
            },
        };
        self.settle_announcing(s, event, settlement, announce).await;
    }

    /// Appends an event that gates no settlement by itself (it becomes durable with the
    /// settlement that follows it, or within 500 ms).
    pub(super) fn append_quiet(
        &self,
        job: &citadel_transports::Job,
        delivery_id: &str,
        event: EventKind,
    ) {
        let name = event.name();
        self.record_outcome(&job.job_type, &event);
        if let Err(e) = self.journal.append_buffered(
            NewEvent::new(job.id.clone(), self.source.name(), event).delivery(delivery_id),
        ) {
            tracing::error!(job_id = %job.id, event = name, error = %e, "journal append failed");
        }
    }
}
