//! The lifecycle fold (docs/journal.md): [`JobState`] folds a job's events into where the job stands and
//! rejects histories that cannot happen. Pure: no I/O, no clock. The journal runs this fold on
//! every append (so an impossible event is refused before it is written) and on every replay.

use citadel_transports::JobId;
use serde::Serialize;

use crate::event::{EventKind, JobEvent};

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed { retryable: bool },
    Cancelled,
    TimedOut,
    Interrupted,
}

/// How the worker finished with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SettledAs {
    Acked,
    Retried,
    DeadLettered,
    Released,
    Skipped,
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", content = "as", rename_all = "snake_case")]
pub enum Phase {
    /// Delivered, not started.
    Received,
    /// A handler is (or was, if the worker died) running it.
    Running,
    /// The attempt ended; the settlement is not recorded yet.
    Finished(Outcome),
    /// The worker is done with the delivery.
    Settled(SettledAs),
}

impl Phase {
    /// One word for tables and filters: `received`, `running`, `succeeded`, `failed`, …, `acked`.
    pub fn label(&self) -> &'static str {
        match self {
            Phase::Received => "received",
            Phase::Running => "running",
            Phase::Finished(Outcome::Succeeded) => "succeeded",
            Phase::Finished(Outcome::Failed { .. }) => "failed",
            Phase::Finished(Outcome::Cancelled) => "cancelled",
            Phase::Finished(Outcome::TimedOut) => "timed_out",
            Phase::Finished(Outcome::Interrupted) => "interrupted",
            Phase::Settled(SettledAs::Acked) => "acked",
            Phase::Settled(SettledAs::Retried) => "retried",
            Phase::Settled(SettledAs::DeadLettered) => "dead_lettered",
            Phase::Settled(SettledAs::Released) => "released",
            Phase::Settled(SettledAs::Skipped) => "skipped",
        }
    }

    /// Every label [`Phase::label`] can return, for `--help` and filter validation.
    pub const LABELS: [&'static str; 12] = [
        "received",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "timed_out",
        "interrupted",
        "acked",
        "retried",
        "dead_lettered",
        "released",
        "skipped",
    ];
}

/// An event the fold refuses: it names the job, the phase and what was attempted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job_id}: cannot record `{event}` while the job is {from}: {why}")]
pub struct TransitionError {
    pub job_id: JobId,
    pub from: String,
    pub event: &'static str,
    pub why: &'static str,
}

/// The most failure messages kept per job (the dead-letter entry carries this history).
pub const MAX_ERROR_HISTORY: usize = 16;

/// Everything the journal knows about one job, folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobState {
    pub job_id: JobId,
    pub job_type: String,
    /// `None` only before the first event is applied.
    pub phase: Option<Phase>,
    /// The highest attempt started.
    pub attempts: u32,
    /// How many deliveries reached this worker.
    pub deliveries: u32,
    /// The sequence number of the `succeeded` event, once there is one: a job with this set is
    /// never executed again (effectively-once); its result is re-published instead.
    pub succeeded_seq: Option<u64>,
    /// The last chunk checkpoint of the current attempt.
    pub last_chunk: Option<u64>,
    /// Failure messages, oldest first, at most [`MAX_ERROR_HISTORY`].
    pub errors: Vec<String>,
    pub first_seq: u64,
    pub last_seq: u64,
    pub first_at_ms: u64,
    pub last_at_ms: u64,
    pub transport: String,
}

impl JobState {
    pub fn new(job_id: JobId) -> Self {
        Self {
            job_id,
            job_type: String::new(),
            phase: None,
            attempts: 0,
            deliveries: 0,
            succeeded_seq: None,
            last_chunk: None,
            errors: Vec::new(),
            first_seq: 0,
            last_seq: 0,
            first_at_ms: 0,
            last_at_ms: 0,
            transport: String::new(),
        }
    }

    /// Folds every event of one job, stopping at the first impossible one.
    pub fn fold<'a>(
        events: impl IntoIterator<Item = &'a JobEvent>,
    ) -> Result<Option<Self>, TransitionError> {
        let mut state: Option<JobState> = None;
        for ev in events {
            state
                .get_or_insert_with(|| JobState::new(ev.job_id.clone()))
                .apply(ev)?;
        }
        Ok(state)
    }

    /// True once a `succeeded` event is recorded for any attempt.
    pub fn ever_succeeded(&self) -> bool {
        self.succeeded_seq.is_some()
    }

    /// True when the worker has handed the delivery back or finished it: nothing is owed.
    pub fn is_settled(&self) -> bool {
        matches!(self.phase, Some(Phase::Settled(_)))
    }

    /// The attempt number a new start must use (docs/journal.md#invariants): the broker's count or one past the
    /// journal's, whichever is higher.
    pub fn next_attempt(&self, broker_attempt: u32) -> u32 {
        broker_attempt.max(self.attempts + 1)
    }

    fn phase_name(&self) -> String {
        self.phase
            .map_or("unknown (no events yet)", |p| p.label())
            .to_string()
    }

    /// Checks that `event` may follow the job's history, without changing anything.
    pub fn check(&self, event: &EventKind) -> Result<(), TransitionError> {
        use EventKind as E;
        let refuse = |why: &'static str| {
            Err(TransitionError {
                job_id: self.job_id.clone(),
                from: self.phase_name(),
                event: event.name(),
                why,
            })
        };
        let Some(phase) = self.phase else {
            return match event {
                E::Received { .. } => Ok(()),
                _ => refuse("a job's first event must be `received`"),
            };
        };
        match (phase, event) {
            (Phase::Running, E::Received { .. }) => refuse(
                "the job is running; a duplicate delivery must not be journaled as a new one",
            ),
            (_, E::Received { .. }) => Ok(()),

            (Phase::Received, E::Started { attempt }) => {
                if self.ever_succeeded() {
                    refuse("it already succeeded; it must not be executed again")
                } else if *attempt <= self.attempts {
                    refuse("attempt numbers must increase")
                } else {
                    Ok(())
                }
            }
            (_, E::Started { .. }) => refuse("only a received delivery can start"),

            (Phase::Running, E::Chunk { index }) => match self.last_chunk {
                Some(last) if *index < last => refuse("chunk checkpoints never go back"),
                _ => Ok(()),
            },
            (_, E::Chunk { .. }) => refuse("chunks belong to a running attempt"),

            (Phase::Running, E::Succeeded { .. } | E::TimedOut { .. } | E::Interrupted { .. }) => {
                Ok(())
            }
            (Phase::Running | Phase::Received, E::Failed { .. } | E::Cancelled { .. }) => Ok(()),
            (Phase::Received, E::Succeeded { .. } | E::TimedOut { .. } | E::Interrupted { .. }) => {
                refuse("an attempt must start before it can succeed, time out or be interrupted")
            }
            (_, e) if e.is_terminal() => refuse("an attempt has exactly one terminal event"),

            (Phase::Settled(_), _) => refuse("the delivery is already settled"),

            (Phase::Finished(_), E::Acked) => Ok(()),
            (Phase::Received, E::Acked) if self.ever_succeeded() => Ok(()),
            (_, E::Acked) => refuse("only a finished attempt (or a redelivered success) is acked"),

            (
                Phase::Finished(Outcome::Failed { .. } | Outcome::TimedOut | Outcome::Interrupted),
                E::Retried { .. },
            ) => Ok(()),
            (_, E::Retried { .. }) => {
                refuse("only a failed, timed-out or interrupted attempt is retried")
            }

            (Phase::Finished(o), E::DeadLettered { .. }) if o != Outcome::Succeeded => Ok(()),
            (_, E::DeadLettered { .. }) => {
                refuse("a dead letter follows the terminal event of an unsuccessful attempt")
            }

            (Phase::Received | Phase::Finished(Outcome::Interrupted), E::Released) => Ok(()),
            (_, E::Released) => refuse("only unstarted or interrupted work is released"),

            (Phase::Received, E::Skipped { .. }) => Ok(()),
            (_, E::Skipped { .. }) => refuse("only an unstarted delivery is skipped"),

            // Every terminal event is covered by the guard arm above.
            (_, _) => refuse("not a lifecycle step"),
        }
    }

    /// Applies one event; an impossible event is refused and leaves the state unchanged.
    pub fn apply(&mut self, ev: &JobEvent) -> Result<(), TransitionError> {
        use EventKind as E;
        self.check(&ev.event)?;
        if self.phase.is_none() {
            self.first_seq = ev.seq;
            self.first_at_ms = ev.at_ms;
        }
        self.last_seq = ev.seq;
        self.last_at_ms = ev.at_ms;
        self.transport.clone_from(&ev.transport);
        let phase = match &ev.event {
            E::Received { job } => {
                self.job_type.clone_from(&job.job_type);
                self.deliveries += 1;
                Phase::Received
            }
            E::Started { attempt } => {
                self.attempts = *attempt;
                self.last_chunk = None;
                Phase::Running
            }
            E::Chunk { index } => {
                self.last_chunk = Some(*index);
                Phase::Running
            }
            E::Succeeded { .. } => {
                self.succeeded_seq = Some(ev.seq);
                Phase::Finished(Outcome::Succeeded)
            }
            E::Failed { error, retryable } => {
                self.push_error(error.clone());
                Phase::Finished(Outcome::Failed {
                    retryable: *retryable,
                })
            }
            E::Cancelled { .. } => Phase::Finished(Outcome::Cancelled),
            E::TimedOut { after_ms } => {
                self.push_error(format!("timed out after {after_ms} ms"));
                Phase::Finished(Outcome::TimedOut)
            }
            E::Interrupted { reason } => {
                self.push_error(format!("interrupted: {reason}"));
                Phase::Finished(Outcome::Interrupted)
            }
            E::Acked => Phase::Settled(SettledAs::Acked),
            E::Retried { .. } => Phase::Settled(SettledAs::Retried),
            E::DeadLettered { .. } => Phase::Settled(SettledAs::DeadLettered),
            E::Released => Phase::Settled(SettledAs::Released),
            E::Skipped { .. } => Phase::Settled(SettledAs::Skipped),
        };
        self.phase = Some(phase);
        Ok(())
    }

    fn push_error(&mut self, error: String) {
        if self.errors.len() == MAX_ERROR_HISTORY {
            self.errors.remove(0);
        }
        self.errors.push(error);
    }
}

#[cfg(test)]
mod tests {
    use citadel_transports::Job;

    use super::*;

    fn job() -> Job {
        Job {
            id: JobId::new("j1").unwrap(),
            job_type: "noop".into(),
            payload: serde_json::json!({}),
            ray_id: None,
            enqueued_at: None,
            attempt: 1,
            source: "memory".into(),
        }
    }

    fn run(events: Vec<EventKind>) -> Result<JobState, TransitionError> {
        let mut state = JobState::new(JobId::new("j1").unwrap());
        for (i, event) in events.into_iter().enumerate() {
            let ev = JobEvent {
                seq: i as u64 + 1,
                at_ms: 1000 + i as u64,
                job_id: state.job_id.clone(),
                transport: "memory".into(),
                delivery_id: None,
                event,
            };
            state.apply(&ev)?;
        }
        Ok(state)
    }

    fn received() -> EventKind {
        EventKind::Received { job: job() }
    }

    #[test]
    fn a_successful_job_folds_to_acked() {
        let s = run(vec![
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Chunk { index: 0 },
            EventKind::Chunk { index: 7 },
            EventKind::Succeeded {
                result: serde_json::json!({"ok": true}),
            },
            EventKind::Acked,
        ])
        .unwrap();
        assert_eq!(s.phase, Some(Phase::Settled(SettledAs::Acked)));
        assert_eq!(s.attempts, 1);
        assert_eq!(s.succeeded_seq, Some(5));
        assert_eq!(s.last_chunk, Some(7));
        assert_eq!(s.job_type, "noop");
        assert!(s.is_settled());
    }

    #[test]
    fn a_succeeded_job_is_never_started_again() {
        let err = run(vec![
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Succeeded {
                result: serde_json::json!(1),
            },
            // crash before the ack: the job is delivered again
            received(),
            EventKind::Started { attempt: 2 },
        ])
        .unwrap_err();
        assert_eq!(err.event, "started");
        assert!(err.to_string().contains("already succeeded"), "{err}");
    }

    #[test]
    fn a_redelivered_success_is_acked_without_running() {
        let s = run(vec![
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Succeeded {
                result: serde_json::json!(1),
            },
            received(),
            EventKind::Acked,
        ])
        .unwrap();
        assert_eq!(s.phase, Some(Phase::Settled(SettledAs::Acked)));
        assert_eq!(s.deliveries, 2);
    }

    #[test]
    fn exactly_one_terminal_event_per_attempt() {
        let err = run(vec![
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Failed {
                error: "boom".into(),
                retryable: true,
            },
            EventKind::Succeeded {
                result: serde_json::json!(1),
            },
        ])
        .unwrap_err();
        assert!(err.to_string().contains("exactly one terminal"), "{err}");
    }

    #[test]
    fn retries_count_attempts_and_keep_the_error_history() {
        let s = run(vec![
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Failed {
                error: "e1".into(),
                retryable: true,
            },
            EventKind::Retried { delay_ms: 100 },
            received(),
            EventKind::Started { attempt: 2 },
            EventKind::TimedOut { after_ms: 50 },
            EventKind::DeadLettered {
                reason: "max attempts".into(),
            },
        ])
        .unwrap();
        assert_eq!(s.attempts, 2);
        assert_eq!(
            s.errors,
            vec!["e1".to_string(), "timed out after 50 ms".into()]
        );
        assert_eq!(s.phase, Some(Phase::Settled(SettledAs::DeadLettered)));
        assert_eq!(s.next_attempt(1), 3);
        assert_eq!(s.next_attempt(5), 5);
    }

    #[test]
    fn attempts_must_increase() {
        let err = run(vec![
            received(),
            EventKind::Started { attempt: 2 },
            EventKind::Interrupted {
                reason: "crash".into(),
            },
            received(),
            EventKind::Started { attempt: 2 },
        ])
        .unwrap_err();
        assert!(err.to_string().contains("increase"), "{err}");
    }

    #[test]
    fn impossible_histories_are_refused() {
        let cases: Vec<Vec<EventKind>> = vec![
            vec![EventKind::Acked],
            vec![
                received(),
                EventKind::Succeeded {
                    result: serde_json::json!(1),
                },
            ],
            vec![received(), EventKind::Chunk { index: 0 }],
            vec![received(), EventKind::Started { attempt: 1 }, received()],
            vec![
                received(),
                EventKind::Started { attempt: 1 },
                EventKind::Acked,
            ],
            vec![
                received(),
                EventKind::Started { attempt: 1 },
                EventKind::Chunk { index: 5 },
                EventKind::Chunk { index: 4 },
            ],
            vec![received(), EventKind::Released, EventKind::Acked],
            vec![
                received(),
                EventKind::Started { attempt: 1 },
                EventKind::Succeeded {
                    result: serde_json::json!(1),
                },
                EventKind::DeadLettered { reason: "x".into() },
            ],
            vec![
                received(),
                EventKind::Started { attempt: 1 },
                EventKind::Succeeded {
                    result: serde_json::json!(1),
                },
                EventKind::Retried { delay_ms: 1 },
            ],
            vec![
                received(),
                EventKind::Started { attempt: 1 },
                EventKind::Released,
            ],
        ];
        for case in cases {
            let names: Vec<_> = case.iter().map(|e| e.name()).collect();
            assert!(run(case).is_err(), "accepted {names:?}");
        }
    }

    #[test]
    fn unstarted_and_interrupted_work_can_be_released_and_redelivered() {
        let s = run(vec![
            received(),
            EventKind::Released,
            received(),
            EventKind::Started { attempt: 1 },
            EventKind::Interrupted {
                reason: "drain timeout".into(),
            },
            EventKind::Released,
            received(),
            EventKind::Cancelled {
                reason: "cancelled before start".into(),
            },
            EventKind::Acked,
        ])
        .unwrap();
        assert_eq!(s.deliveries, 3);
        assert_eq!(s.attempts, 1);
        assert_eq!(s.phase, Some(Phase::Settled(SettledAs::Acked)));
    }
}
