//! Property tests of the lifecycle fold and the journal against a model: random event sequences
//! over a few jobs. The model is an independent checker of docs/journal.md's obligations over a history;
//! the fold must never accept a history the checker rejects, must accept every history a
//! well-behaved worker produces, and the journal's replay must equal its live fold.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use citadel_journal::{
    Durability, EventKind, JobEvent, JobState, Journal, JournalOptions, RetentionPolicy,
};
use common::{id, job};
use proptest::prelude::*;

const JOBS: [&str; 3] = ["a", "b", "c"];

fn any_event() -> impl Strategy<Value = EventKind> {
    prop_oneof![
        Just(EventKind::Received { job: job("x") }),
        (1u32..5).prop_map(|attempt| EventKind::Started { attempt }),
        (0u64..5).prop_map(|index| EventKind::Chunk { index }),
        Just(EventKind::Succeeded {
            result: serde_json::json!({"ok": 1})
        }),
        any::<bool>().prop_map(|retryable| EventKind::Failed {
            error: "e".into(),
            retryable
        }),
        Just(EventKind::Cancelled { reason: "c".into() }),
        Just(EventKind::TimedOut { after_ms: 5 }),
        Just(EventKind::Interrupted { reason: "i".into() }),
        Just(EventKind::Acked),
        Just(EventKind::Retried { delay_ms: 10 }),
        Just(EventKind::DeadLettered { reason: "d".into() }),
        Just(EventKind::Released),
        Just(EventKind::Skipped { reason: "s".into() }),
    ]
}

fn history() -> impl Strategy<Value = Vec<(usize, EventKind)>> {
    proptest::collection::vec((0..JOBS.len(), any_event()), 0..60)
}

/// The obligations of docs/journal.md over one job's accepted history, checked without the fold.
fn obligations_hold(events: &[&EventKind]) -> Result<(), String> {
    let mut succeeded = false;
    let mut last_attempt = 0;
    // What the previous event was, coarsely.
    #[derive(PartialEq, Clone, Copy, Debug)]
    enum At {
        Nothing,
        Delivered,
        Running,
        Ended,
        Settled,
    }
    let mut at = At::Nothing;
    let mut ended_by_interrupt = false;
    let mut ended_by_success = false;
    for (i, e) in events.iter().enumerate() {
        let bad = |why: &str| Err(format!("event {i} ({}) after {at:?}: {why}", e.name()));
        match e {
            EventKind::Received { .. } => {
                if at == At::Running {
                    return bad("delivered while running");
                }
                at = At::Delivered;
            }
            EventKind::Started { attempt } => {
                if succeeded {
                    return bad("a succeeded job ran again");
                }
                if at != At::Delivered {
                    return bad("started without a delivery");
                }
                if *attempt <= last_attempt {
                    return bad("attempt did not increase");
                }
                last_attempt = *attempt;
                at = At::Running;
            }
            EventKind::Chunk { .. } => {
                if at != At::Running {
                    return bad("chunk outside a run");
                }
            }
            e if e.is_terminal() => {
                let from_delivery =
                    matches!(e, EventKind::Failed { .. } | EventKind::Cancelled { .. });
                if !(at == At::Running || (at == At::Delivered && from_delivery)) {
                    return bad("second or unstarted terminal event");
                }
                ended_by_interrupt = matches!(e, EventKind::Interrupted { .. });
                ended_by_success = matches!(e, EventKind::Succeeded { .. });
                succeeded |= ended_by_success;
                at = At::Ended;
            }
            _ => {
                let ok = match e {
                    EventKind::Acked => at == At::Ended || (at == At::Delivered && succeeded),
                    EventKind::Retried { .. } => at == At::Ended && !ended_by_success,
                    EventKind::DeadLettered { .. } => at == At::Ended && !ended_by_success,
                    EventKind::Released => {
                        at == At::Delivered || (at == At::Ended && ended_by_interrupt)
                    }
                    EventKind::Skipped { .. } => at == At::Delivered,
                    _ => false,
                };
                if !ok {
                    return bad("settlement out of place");
                }
                if matches!(e, EventKind::Retried { .. })
                    && !matches!(
                        events.get(i.wrapping_sub(1)),
                        Some(
                            EventKind::Failed { .. }
                                | EventKind::TimedOut { .. }
                                | EventKind::Interrupted { .. }
                        )
                    )
                {
                    return bad("retried something that did not fail");
                }
                at = At::Settled;
            }
        }
    }
    Ok(())
}

fn stamp(seq: u64, job_id: &str, event: EventKind) -> JobEvent {
    JobEvent {
        seq,
        at_ms: seq,
        job_id: id(job_id),
        transport: "test".into(),
        delivery_id: None,
        event,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whatever is thrown at it, what the fold accepts is a possible history.
    #[test]
    fn the_fold_never_accepts_an_impossible_history(h in history()) {
        let mut states: HashMap<usize, JobState> = HashMap::new();
        let mut accepted: HashMap<usize, Vec<EventKind>> = HashMap::new();
        for (seq, (j, e)) in h.into_iter().enumerate() {
            let state = states.entry(j).or_insert_with(|| JobState::new(id(JOBS[j])));
            if state.apply(&stamp(seq as u64 + 1, JOBS[j], e.clone())).is_ok() {
                accepted.entry(j).or_default().push(e);
            }
        }
        for (j, events) in &accepted {
            let refs: Vec<&EventKind> = events.iter().collect();
            prop_assert!(obligations_hold(&refs).is_ok(), "job {}: {:?}", JOBS[*j], obligations_hold(&refs));
        }
    }

    /// A refused event changes nothing.
    #[test]
    fn refused_events_leave_the_state_unchanged(h in history(), e in any_event()) {
        let mut state = JobState::new(id("a"));
        for (seq, (_, ev)) in h.into_iter().enumerate() {
            let _ = state.apply(&stamp(seq as u64 + 1, "a", ev));
        }
        let before = state.clone();
        if state.apply(&stamp(1000, "a", e)).is_err() {
            prop_assert_eq!(before, state);
        }
    }

    /// Every history a well-behaved worker writes is accepted: random walks of the lifecycle.
    #[test]
    fn every_lifecycle_walk_is_accepted(steps in proptest::collection::vec(0u8..6, 1..12)) {
        let mut events = Vec::new();
        let mut attempt = 0;
        for step in steps {
            events.push(EventKind::Received { job: job("a") });
            match step {
                0 => events.push(EventKind::Released),
                1 => events.push(EventKind::Skipped { reason: "other node".into() }),
                2 => {
                    attempt += 1;
                    events.push(EventKind::Started { attempt });
                    events.push(EventKind::Chunk { index: 3 });
                    events.push(EventKind::Failed { error: "x".into(), retryable: true });
                    events.push(EventKind::Retried { delay_ms: 100 });
                }
                3 => {
                    attempt += 1;
                    events.push(EventKind::Started { attempt });
                    events.push(EventKind::Interrupted { reason: "crash".into() });
                }
                4 => {
                    events.push(EventKind::Cancelled { reason: "user".into() });
                    events.push(EventKind::Acked);
                }
                _ => {
                    attempt += 1;
                    events.push(EventKind::Started { attempt });
                    events.push(EventKind::TimedOut { after_ms: 10 });
                    events.push(EventKind::DeadLettered { reason: "max attempts".into() });
                }
            }
        }
        let stamped: Vec<JobEvent> = events.into_iter().enumerate().map(|(i, e)| stamp(i as u64 + 1, "a", e)).collect();
        prop_assert!(JobState::fold(&stamped).is_ok(), "{:?}", JobState::fold(&stamped));
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// The journal's live fold equals the fold of what it stored, after reopening; and
    /// compaction, whatever its policy, keeps every job still owed a settlement untouched.
    #[test]
    fn replay_equals_the_live_fold_and_compaction_keeps_unsettled_jobs(
        h in history(),
        max_bytes in proptest::option::of(0u64..3000),
        by_age in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let options = JournalOptions { durability: Durability::Buffered, recover: false };
        runtime().block_on(async {
            let (journal, _) = Journal::open(&path, options).unwrap();
            for (j, e) in h {
                let _ = journal.append(common::ev(JOBS[j], e)).await;
            }
            let mut live = journal.states();
            live.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            let unsettled: Vec<_> = live.iter().filter(|s| !s.is_settled()).cloned().collect();
            drop(journal);

            let (journal, report) = Journal::open(&path, options).unwrap();
            prop_assert!(report.damaged.is_empty());
            let mut replayed = journal.states();
            replayed.sort_by(|a, b| a.job_id.cmp(&b.job_id));
            prop_assert_eq!(&live, &replayed);

            let policy = RetentionPolicy { max_age: by_age.then_some(Duration::ZERO), max_bytes };
            journal.compact(&policy).unwrap();
            for s in &unsettled {
                prop_assert_eq!(journal.state(&s.job_id), Some(s.clone()));
                let stored = journal.events_of(&s.job_id).unwrap();
                prop_assert_eq!(JobState::fold(&stored).unwrap(), Some(s.clone()));
            }
            Ok(())
        })?;
    }
}
