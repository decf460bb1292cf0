//! Whether a delivery may run, decided from plain values (docs/journal.md#invariants): what the
//! journal knows of the job, the job's own fields, this node's identity, the configured attempts
//! and the handler found for the type. Pure: no I/O, no clock, no journal handle; the runtime
//! ([`super::attempt`]) carries out the decision. The checks run in a fixed order, and the order
//! is part of the behaviour: a delivery of a job that another delivery is working here right now
//! waits for that one to end, and a job the journal shows running (with no delivery here) is
//! handed back, both before anything is journaled; then a job that ever succeeded is acked from
//! the journal, a job the journal dead-lettered last is dead-lettered again (its move to the
//! dead-letter queue may not have happened), a job for another node is skipped, a job past its
//! attempts and a job of an unknown type are dead-lettered.

use citadel_journal::{JobState, Phase, SettledAs};
use citadel_transports::Job;

/// What decides a delivery's admission, besides the handler.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Facts<'a> {
    /// The journal's state of the job, if it has seen it.
    pub state: Option<&'a JobState>,
    /// Another delivery of the same job id is being worked on this node right now.
    pub in_flight_here: bool,
    /// The job as the transport delivered it (its attempt is the broker's count).
    pub job: &'a Job,
    pub node_id: &'a str,
    pub node_name: &'a str,
    /// Attempts allowed when the payload does not say `maxAttempts`.
    pub default_max_attempts: u32,
}

/// The first decision, taken before the delivery is journaled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admission<H> {
    /// Another delivery of the job is in flight here: wait until it ends, then decide again
    /// from what the journal says by then. Nothing is journaled meanwhile.
    WaitForFirst,
    /// The journal shows the job running, yet no delivery of it is in flight here (its end could
    /// not be journaled): hand this copy back for later. Nothing is journaled.
    DuplicateRunning,
    /// Journal the delivery as attempt `attempt`, then carry out `verdict`.
    Receive { attempt: u32, verdict: Verdict<H> },
}

/// What becomes of a journaled delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict<H> {
    /// The job ever succeeded: ack it with the journal's recorded result, never run it.
    AlreadySucceeded,
    /// The journal's last word on the job is a dead letter (the move may have failed): dead-letter
    /// it again without running.
    AlreadyDeadLettered,
    /// The job is addressed to another node: skip it.
    OtherNode { target: String },
    /// The job was delivered more than `max` times: dead-letter it without running.
    AttemptsExhausted { max: u32 },
    /// No handler for the type: dead-letter it without running.
    UnknownType { max_attempts: u32 },
    /// Run it with `handler` (once the producer's cancellation is checked).
    Run { max_attempts: u32, handler: H },
}

/// Decides a delivery's admission; `handler` is the registry's handler for the job's type.
pub(crate) fn decide<H>(facts: &Facts<'_>, handler: Option<H>) -> Admission<H> {
    let job = facts.job;
    if facts.in_flight_here {
        return Admission::WaitForFirst;
    }
    if facts.state.is_some_and(|s| s.phase == Some(Phase::Running)) {
        return Admission::DuplicateRunning;
    }
    let attempt = facts
        .state
        .map_or(job.attempt, |s| s.next_attempt(job.attempt));
    let verdict = if facts.state.is_some_and(JobState::ever_succeeded) {
        Verdict::AlreadySucceeded
    } else if facts.state.is_some_and(dead_lettered_last) {
        Verdict::AlreadyDeadLettered
    } else if let Some(target) = foreign_target(facts) {
        Verdict::OtherNode { target }
    } else {
        let max = max_attempts(job, facts.default_max_attempts);
        match handler {
            _ if attempt > max => Verdict::AttemptsExhausted { max },
            None => Verdict::UnknownType { max_attempts: max },
            Some(handler) => Verdict::Run {
                max_attempts: max,
                handler,
            },
        }
    };
    Admission::Receive { attempt, verdict }
}

/// The journal's last settlement of the job moved it to the dead-letter queue.
fn dead_lettered_last(state: &JobState) -> bool {
    state.phase == Some(Phase::Settled(SettledAs::DeadLettered))
}

/// The payload's `target_node` when it names neither this node's id nor its name.
fn foreign_target(facts: &Facts<'_>) -> Option<String> {
    facts
        .job
        .payload_str("target_node")
        .filter(|t| !t.is_empty() && t != facts.node_id && t != facts.node_name)
}

/// The payload's `maxAttempts` (a positive integer, as a number or a string), else `default`.
pub(crate) fn max_attempts(job: &Job, default: u32) -> u32 {
    job.payload_str("maxAttempts")
        .and_then(|m| m.parse::<u32>().ok())
        .filter(|m| *m > 0)
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use citadel_journal::Outcome;
    use citadel_transports::JobId;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    const NODE_ID: &str = "node-7f3a";
    const NODE_NAME: &str = "gpu-box";

    fn job(attempt: u32, payload: Value) -> Job {
        Job {
            id: JobId::new("job-1").unwrap(),
            job_type: "noop".into(),
            payload,
            ray_id: None,
            enqueued_at: None,
            attempt,
            source: "redis:jobs".into(),
        }
    }

    fn state(phase: Phase, attempts: u32, succeeded: bool) -> JobState {
        let mut s = JobState::new(JobId::new("job-1").unwrap());
        s.phase = Some(phase);
        s.attempts = attempts;
        s.succeeded_seq = succeeded.then_some(3);
        s
    }

    fn decide_for(state: Option<&JobState>, job: &Job, known: bool) -> Admission<()> {
        decide_on((NODE_ID, NODE_NAME), state, false, job, known)
    }

    fn decide_on(
        (node_id, node_name): (&str, &str),
        state: Option<&JobState>,
        in_flight_here: bool,
        job: &Job,
        known: bool,
    ) -> Admission<()> {
        let facts = Facts {
            state,
            in_flight_here,
            job,
            node_id,
            node_name,
            default_max_attempts: 3,
        };
        decide(&facts, known.then_some(()))
    }

    fn receive(attempt: u32, verdict: Verdict<()>) -> Admission<()> {
        Admission::Receive { attempt, verdict }
    }

    #[test]
    fn a_new_job_for_anyone_runs() {
        let run = Verdict::Run {
            max_attempts: 3,
            handler: (),
        };
        assert_eq!(decide_for(None, &job(1, json!({})), true), receive(1, run));
    }

    #[test]
    fn a_job_running_here_is_handed_back_even_if_it_once_succeeded() {
        let s = state(Phase::Running, 2, true);
        let d = decide_for(Some(&s), &job(1, json!({})), true);
        assert_eq!(d, Admission::DuplicateRunning);
    }

    #[test]
    fn a_job_in_flight_here_waits_whatever_the_journal_says() {
        for s in [
            None,
            Some(state(Phase::Received, 0, false)),
            Some(state(Phase::Settled(SettledAs::Acked), 1, true)),
        ] {
            let d = decide_on(
                (NODE_ID, NODE_NAME),
                s.as_ref(),
                true,
                &job(1, json!({})),
                true,
            );
            assert_eq!(d, Admission::WaitForFirst);
        }
    }

    #[test]
    fn a_dead_lettered_job_is_dead_lettered_again_without_running() {
        let s = state(Phase::Settled(SettledAs::DeadLettered), 1, false);
        let d = decide_for(Some(&s), &job(2, json!({"maxAttempts": 9})), true);
        assert_eq!(d, receive(2, Verdict::AlreadyDeadLettered));
        let retried = state(Phase::Settled(SettledAs::Retried), 1, false);
        let d = decide_for(Some(&retried), &job(2, json!({})), true);
        assert!(matches!(
            d,
            Admission::Receive {
                verdict: Verdict::Run { .. },
                ..
            }
        ));
    }

    #[test]
    fn a_succeeded_job_is_acked_before_any_other_check() {
        let s = state(Phase::Settled(SettledAs::Acked), 5, true);
        let foreign = json!({"target_node": "elsewhere", "maxAttempts": 1});
        let d = decide_for(Some(&s), &job(1, foreign), false);
        assert_eq!(d, receive(6, Verdict::AlreadySucceeded));
    }

    #[test]
    fn a_job_for_another_node_is_skipped_and_this_node_answers_to_id_and_name() {
        let other = job(1, json!({"target_node": "elsewhere"}));
        let target = "elsewhere".to_string();
        assert_eq!(
            decide_for(None, &other, false),
            receive(1, Verdict::OtherNode { target })
        );
        for mine in [NODE_ID, NODE_NAME, ""] {
            let d = decide_for(None, &job(1, json!({ "target_node": mine })), true);
            assert!(matches!(
                d,
                Admission::Receive {
                    verdict: Verdict::Run { .. },
                    ..
                }
            ));
        }
    }

    #[test]
    fn attempts_count_from_the_journal_and_the_payload_may_raise_the_limit() {
        let s = state(Phase::Finished(Outcome::Interrupted), 3, false);
        let d = decide_for(Some(&s), &job(1, json!({})), true);
        assert_eq!(d, receive(4, Verdict::AttemptsExhausted { max: 3 }));
        let d = decide_for(Some(&s), &job(1, json!({"maxAttempts": "5"})), true);
        let run = Verdict::Run {
            max_attempts: 5,
            handler: (),
        };
        assert_eq!(d, receive(4, run));
        // Zero, negative and junk limits fall back to the configured one.
        for junk in [json!(0), json!("-1"), json!("many"), json!(true)] {
            let d = decide_for(None, &job(4, json!({ "maxAttempts": junk })), true);
            assert_eq!(d, receive(4, Verdict::AttemptsExhausted { max: 3 }));
        }
    }

    #[test]
    fn exhausted_attempts_are_checked_before_the_type() {
        let d = decide_for(None, &job(4, json!({})), false);
        assert_eq!(d, receive(4, Verdict::AttemptsExhausted { max: 3 }));
        let d = decide_for(None, &job(3, json!({})), false);
        assert_eq!(d, receive(3, Verdict::UnknownType { max_attempts: 3 }));
    }

    /// The admission rules written out once more, as plainly as possible.
    fn model(
        (node_id, node_name): (&str, &str),
        in_flight_here: bool,
        journal: Option<(Phase, u32, bool)>,
        broker_attempt: u32,
        target: Option<&str>,
        max_field: Option<u32>,
        known: bool,
    ) -> Admission<()> {
        if in_flight_here {
            return Admission::WaitForFirst;
        }
        if let Some((Phase::Running, _, _)) = journal {
            return Admission::DuplicateRunning;
        }
        let attempt = match journal {
            Some((_, attempts, _)) => broker_attempt.max(attempts + 1),
            None => broker_attempt,
        };
        let max = max_field.filter(|m| *m > 0).unwrap_or(3);
        let verdict = if journal.is_some_and(|(_, _, succeeded)| succeeded) {
            Verdict::AlreadySucceeded
        } else if let Some((Phase::Settled(SettledAs::DeadLettered), _, _)) = journal {
            Verdict::AlreadyDeadLettered
        } else if let Some(t) = target.filter(|t| ![node_id, node_name, ""].contains(t)) {
            Verdict::OtherNode {
                target: t.to_string(),
            }
        } else if attempt > max {
            Verdict::AttemptsExhausted { max }
        } else if !known {
            Verdict::UnknownType { max_attempts: max }
        } else {
            Verdict::Run {
                max_attempts: max,
                handler: (),
            }
        };
        receive(attempt, verdict)
    }

    fn phase() -> impl Strategy<Value = Phase> {
        prop_oneof![
            Just(Phase::Received),
            Just(Phase::Running),
            Just(Phase::Finished(Outcome::Succeeded)),
            Just(Phase::Finished(Outcome::Failed { retryable: true })),
            Just(Phase::Finished(Outcome::Interrupted)),
            Just(Phase::Settled(SettledAs::Acked)),
            Just(Phase::Settled(SettledAs::Retried)),
            Just(Phase::Settled(SettledAs::Released)),
            Just(Phase::Settled(SettledAs::DeadLettered)),
        ]
    }

    /// Node ids, names and targets drawn from one small pool, so that they often coincide.
    fn name() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            Just(NODE_ID),
            Just(NODE_NAME),
            Just("elsewhere"),
            Just("GPU-BOX")
        ]
    }

    fn target() -> impl Strategy<Value = Option<&'static str>> {
        proptest::option::of(prop_oneof![name(), Just("")])
    }

    /// A payload with the target and the limit, the limit written as a number or a string.
    fn payload(target: Option<&str>, max: Option<u32>, as_string: bool) -> Value {
        let mut p = json!({"prompt": "hi"});
        if let Some(t) = target {
            p["target_node"] = json!(t);
        }
        if let Some(m) = max {
            p["maxAttempts"] = if as_string {
                json!(m.to_string())
            } else {
                json!(m)
            };
        }
        p
    }

    proptest! {
        #[test]
        fn the_decision_is_the_models(
            node in (name(), name()),
            in_flight_here in any::<bool>(),
            journal in proptest::option::of((phase(), 0u32..8, any::<bool>())),
            broker_attempt in 1u32..10,
            target in target(),
            max_field in proptest::option::of(0u32..8),
            as_string in any::<bool>(),
            known in any::<bool>(),
        ) {
            let s = journal.map(|(p, attempts, succeeded)| state(p, attempts, succeeded));
            let j = job(broker_attempt, payload(target, max_field, as_string));
            let d = decide_on(node, s.as_ref(), in_flight_here, &j, known);
            prop_assert_eq!(&d, &model(node, in_flight_here, journal, broker_attempt, target, max_field, known));

            let ever_succeeded = s.as_ref().is_some_and(JobState::ever_succeeded);
            match d {
                Admission::WaitForFirst => prop_assert!(in_flight_here),
                Admission::DuplicateRunning => {
                    prop_assert!(!in_flight_here);
                    prop_assert_eq!(s.and_then(|s| s.phase), Some(Phase::Running));
                }
                Admission::Receive { attempt, verdict } => {
                    prop_assert!(!in_flight_here, "nothing is journaled beside a delivery in flight");
                    prop_assert!(attempt >= broker_attempt);
                    prop_assert!(s.as_ref().is_none_or(|s| attempt > s.attempts));
                    if ever_succeeded {
                        prop_assert_eq!(&verdict, &Verdict::AlreadySucceeded);
                    }
                    if let Verdict::Run { max_attempts, .. } = verdict {
                        prop_assert!(!ever_succeeded);
                        prop_assert!(s.as_ref().is_none_or(|s| !dead_lettered_last(s)));
                        prop_assert!(attempt <= max_attempts);
                        prop_assert!(known);
                        prop_assert!(target.is_none_or(|t| [node.0, node.1, ""].contains(&t)));
                    }
                }
            }
        }
    }
}
