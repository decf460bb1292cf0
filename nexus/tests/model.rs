//! Property tests of the queue ([`citadel_nexus::queue::Queue`]) against a simple model: random
//! sequences of submit, claim, renew, settle, expire, cancel and job events from several workers,
//! with the time moving on. The model keeps, per job, who holds it (one owner at a time), the
//! claims made, each lease's own outcome and whether it is final; the queue must agree with it
//! after every step: a stale or foreign lease is refused, attempts are counted once per claim, an
//! expired lease dead-letters a job after exactly its max attempts unless that lease reported
//! its `end` (then the job has succeeded, settled by that lease), and an acknowledged job ends
//! in the state its settling lease reported.

use std::collections::HashMap;
use std::time::Duration;

use citadel_nexus::queue::{Queue, Reporter};
use citadel_nexus::record::{LeaseSettle, NewJob, Outcome, QueueState};
use citadel_nexus::store::StoreError;
use proptest::prelude::*;
use serde_json::Map;

const WORKERS: usize = 3;
const JOBS: usize = 2;
const LEASE_MS: u64 = 100;

#[derive(Debug, Clone)]
enum Op {
    Submit {
        max: u32,
    },
    Claim {
        worker: usize,
        max: usize,
    },
    Renew {
        worker: usize,
        job: usize,
    },
    Settle {
        worker: usize,
        job: usize,
        how: How,
    },
    Event {
        worker: usize,
        job: usize,
        ty: &'static str,
    },
    Cancel {
        job: usize,
    },
    Wait {
        ms: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum How {
    Ack(Option<Outcome>),
    Retry,
    DeadLetter,
    Release,
}

fn any_op() -> impl Strategy<Value = Op> {
    let w = 0..WORKERS;
    let j = 0..JOBS;
    prop_oneof![
        1 => (1u32..4).prop_map(|max| Op::Submit { max }),
        3 => (w.clone(), 1usize..3).prop_map(|(worker, max)| Op::Claim { worker, max }),
        1 => (w.clone(), j.clone()).prop_map(|(worker, job)| Op::Renew { worker, job }),
        3 => (w.clone(), j.clone(), any_how()).prop_map(|(worker, job, how)| Op::Settle {
            worker,
            job,
            how
        }),
        3 => (
            w,
            j.clone(),
            prop::sample::select(vec!["claimed", "chunk", "end", "error", "cancelled"])
        )
            .prop_map(|(worker, job, ty)| Op::Event { worker, job, ty }),
        1 => j.prop_map(|job| Op::Cancel { job }),
        2 => (1u64..150).prop_map(|ms| Op::Wait { ms }),
    ]
}

fn any_how() -> impl Strategy<Value = How> {
    prop_oneof![
        prop::option::of(prop::sample::select(vec![
            Outcome::End,
            Outcome::Error,
            Outcome::Cancelled
        ]))
        .prop_map(How::Ack),
        Just(How::Retry),
        Just(How::DeadLetter),
        Just(How::Release),
    ]
}

/// What the model knows of one job.
#[derive(Debug, Clone, Default)]
struct ModelJob {
    max: u32,
    /// Claims that count (a release gives its attempt back).
    attempts: u32,
    /// The current lease: (worker, lease id, expires at).
    owner: Option<(usize, String, u64)>,
    /// The outcome each lease reported through its own events.
    reported: HashMap<String, Outcome>,
    final_state: Option<QueueState>,
    /// When it became final (by the model's clock).
    finished_at: u64,
    /// The lease that made the job final.
    settled_by: Option<String>,
    /// Ready again at (a retry's delay).
    ready_at: u64,
}

#[derive(Debug, Default)]
struct Model {
    jobs: Vec<(String, ModelJob)>,
    /// The leases each worker was given: (job index, lease id).
    given: Vec<Vec<(usize, String)>>,
    now: u64,
    next_lease: u64,
}

impl ModelJob {
    /// The job became final in `state` at `now`.
    fn finish(&mut self, state: QueueState, now: u64) {
        self.final_state = Some(state);
        self.finished_at = now;
    }
}

impl Model {
    /// The lease `worker` would name for job `j`: its newest one for that job.
    fn lease_of(&self, worker: usize, j: usize) -> Option<String> {
        self.given[worker]
            .iter()
            .rev()
            .find(|(k, _)| *k == j)
            .map(|(_, l)| l.clone())
    }

    fn is_current(&self, j: usize, lease: &str) -> bool {
        let m = &self.jobs[j].1;
        m.final_state.is_none()
            && m.owner
                .as_ref()
                .is_some_and(|(_, l, exp)| l == lease && *exp > self.now)
    }
}

fn new_job(max: u32) -> NewJob {
    NewJob {
        id: None,
        job_type: "t".into(),
        payload: Map::new(),
        ray_id: None,
        max_attempts: Some(max),
        org: None,
        requires: Vec::new(),
        target_node: None,
    }
}

/// Expires what the model says has expired (the queue's reaper runs before each step).
fn expire(q: &mut Queue, m: &mut Model) -> Result<(), TestCaseError> {
    let changed = q.expire(m.now);
    let mut want = 0;
    for (id, mj) in m.jobs.iter_mut() {
        let Some((_, lease, exp)) = &mj.owner else {
            continue;
        };
        if *exp > m.now || mj.final_state.is_some() {
            continue;
        }
        want += 1;
        let lease = lease.clone();
        mj.owner = None;
        let r = q.get(id).unwrap();
        if mj.reported.get(&lease) == Some(&Outcome::End) {
            prop_assert_eq!(
                r.state,
                QueueState::Succeeded,
                "its recorded success stands"
            );
            prop_assert_eq!(r.attempts, mj.attempts, "no attempt added");
            mj.finish(QueueState::Succeeded, m.now);
            mj.settled_by = Some(lease);
        } else if mj.attempts >= mj.max {
            prop_assert_eq!(r.state, QueueState::Dead, "dead after exactly max attempts");
            mj.finish(QueueState::Dead, m.now);
        } else {
            prop_assert_eq!(r.state, QueueState::Queued, "back in the queue");
            mj.ready_at = 0;
        }
    }
    prop_assert_eq!(changed.len(), want);
    Ok(())
}

fn step(q: &mut Queue, m: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    expire(q, m)?;
    match op {
        Op::Submit { max } => {
            let id = format!("job-{}", m.jobs.len());
            let r = q.submit(new_job(*max), id.clone(), m.now).unwrap();
            prop_assert_eq!(&r.id, &id);
            m.jobs.push((
                id,
                ModelJob {
                    max: *max,
                    ..Default::default()
                },
            ));
        }
        Op::Claim { worker, max } => {
            let next = &mut m.next_lease;
            let got = q.claim(
                "default",
                &format!("w{worker}"),
                *max,
                Duration::from_millis(LEASE_MS),
                m.now,
                || {
                    *next += 1;
                    format!("L{next}")
                },
            );
            prop_assert!(got.len() <= *max);
            for r in got {
                let j = m.jobs.iter().position(|(id, _)| *id == r.id).unwrap();
                let mj = &mut m.jobs[j].1;
                prop_assert!(mj.owner.is_none(), "one owner at a time: {:?}", mj);
                prop_assert!(mj.final_state.is_none(), "a final job is never claimed");
                prop_assert!(mj.ready_at <= m.now, "not before its retry delay");
                mj.attempts += 1;
                prop_assert_eq!(r.attempts, mj.attempts, "one attempt per claim");
                let lease = r.lease.clone().unwrap();
                mj.owner = Some((*worker, lease.id.clone(), m.now + LEASE_MS));
                m.given[*worker].push((j, lease.id));
            }
        }
        Op::Renew { worker, job } => {
            let Some(lease) = (*job < m.jobs.len())
                .then(|| m.lease_of(*worker, *job))
                .flatten()
            else {
                return Ok(());
            };
            let id = m.jobs[*job].0.clone();
            let res = q.renew(&id, &lease, Duration::from_millis(LEASE_MS), m.now);
            if m.is_current(*job, &lease) {
                prop_assert!(res.is_ok(), "{:?}", res);
                if let Some(o) = m.jobs[*job].1.owner.as_mut() {
                    o.2 = m.now + LEASE_MS;
                }
            } else {
                prop_assert!(matches!(res, Err(StoreError::LeaseLost(_))), "{:?}", res);
            }
        }
        Op::Event { worker, job, ty } => {
            let Some(lease) = (*job < m.jobs.len())
                .then(|| m.lease_of(*worker, *job))
                .flatten()
            else {
                return Ok(());
            };
            let id = m.jobs[*job].0.clone();
            let res = q.event(&id, Reporter::Lease(&lease), ty, None);
            if m.is_current(*job, &lease) {
                prop_assert!(res.is_ok(), "{:?}", res);
                if let Some(o) = Outcome::of_event(ty) {
                    m.jobs[*job].1.reported.insert(lease, o);
                }
            } else {
                prop_assert!(matches!(res, Err(StoreError::LeaseLost(_))), "{:?}", res);
            }
        }
        Op::Settle { worker, job, how } => settle(q, m, *worker, *job, *how)?,
        Op::Cancel { job } => {
            let Some((id, mj)) = m.jobs.get_mut(*job) else {
                return Ok(());
            };
            let (r, _) = q.cancel(id, m.now).unwrap();
            if mj.final_state.is_none() && mj.owner.is_none() {
                mj.finish(QueueState::Cancelled, m.now);
            }
            prop_assert_eq!(Some(r.state).filter(|s| s.is_final()), mj.final_state);
        }
        Op::Wait { ms } => m.now += ms,
    }
    Ok(())
}

fn settle(
    q: &mut Queue,
    m: &mut Model,
    worker: usize,
    job: usize,
    how: How,
) -> Result<(), TestCaseError> {
    let Some(lease) = (job < m.jobs.len())
        .then(|| m.lease_of(worker, job))
        .flatten()
    else {
        return Ok(());
    };
    let id = m.jobs[job].0.clone();
    let settle = match how {
        How::Ack(outcome) => LeaseSettle::Ack { outcome },
        How::Retry => LeaseSettle::Retry {
            delay: Duration::from_millis(20),
            error: Some("e".into()),
        },
        How::DeadLetter => LeaseSettle::DeadLetter {
            reason: "d".into(),
            errors: Vec::new(),
        },
        How::Release => LeaseSettle::Release,
    };
    let res = q.settle(&id, &lease, settle, m.now);
    let mj = &mut m.jobs[job].1;
    if mj.final_state.is_some() {
        // Only the settling lease's repeat is answered (idempotent); a late one is refused.
        if mj.settled_by.as_deref() == Some(lease.as_str()) {
            prop_assert_eq!(res.map(|r| Some(r.state)).ok(), Some(mj.final_state));
        } else {
            prop_assert!(matches!(res, Err(StoreError::LeaseLost(_))), "{:?}", res);
        }
        return Ok(());
    }
    let current = mj
        .owner
        .as_ref()
        .is_some_and(|(_, l, exp)| *l == lease && *exp > m.now);
    if !current {
        prop_assert!(matches!(res, Err(StoreError::LeaseLost(_))), "{:?}", res);
        return Ok(());
    }
    let r = res.map_err(|e| TestCaseError::fail(e.to_string()))?;
    mj.owner = None;
    match how {
        How::Ack(outcome) => {
            let own = mj.reported.get(&lease).copied();
            let want = outcome
                .or(own)
                .map_or(QueueState::Succeeded, Outcome::state);
            prop_assert_eq!(r.state, want, "the settling lease's own outcome decides");
            mj.finish(want, m.now);
            mj.settled_by = Some(lease);
        }
        How::DeadLetter => {
            prop_assert_eq!(r.state, QueueState::Dead);
            mj.finish(QueueState::Dead, m.now);
            mj.settled_by = Some(lease);
        }
        How::Retry => {
            prop_assert_eq!(r.state, QueueState::Queued);
            mj.ready_at = m.now + 20;
        }
        How::Release => {
            prop_assert_eq!(r.state, QueueState::Queued);
            mj.attempts -= 1;
            mj.ready_at = 0;
        }
    }
    prop_assert_eq!(r.attempts, mj.attempts);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_queue_agrees_with_the_model(ops in proptest::collection::vec(any_op(), 1..80)) {
        let mut q = Queue::default();
        let mut m = Model { given: vec![Vec::new(); WORKERS], ..Default::default() };
        for op in &ops {
            step(&mut q, &mut m, op)?;
            for (id, mj) in &m.jobs {
                let r = q.get(id).unwrap();
                prop_assert_eq!(r.attempts, mj.attempts, "{}", id);
                prop_assert_eq!(r.state.is_final(), mj.final_state.is_some(), "{}: {:?}", id, r.state);
                prop_assert_eq!(
                    r.lease.as_ref().map(|l| l.id.clone()),
                    mj.owner.as_ref().map(|o| o.1.clone()),
                    "{} has the model's owner", id
                );
            }
        }
    }
}

/// What retention must remove, by the model: the finished (not dead-lettered) jobs that
/// finished at least `age` ms before `now`, and the oldest beyond `cap`.
fn model_retired(m: &Model, age: u64, cap: usize, now: u64) -> Vec<String> {
    let mut done: Vec<(u64, usize)> = m
        .jobs
        .iter()
        .enumerate()
        .filter(|(_, (_, mj))| mj.final_state.is_some_and(|s| s != QueueState::Dead))
        .map(|(j, (_, mj))| (mj.finished_at, j))
        .collect();
    done.sort_unstable();
    let over = done.len().saturating_sub(cap);
    done.iter()
        .enumerate()
        .filter(|(i, (at, _))| *i < over || *at + age <= now)
        .map(|(_, (_, j))| m.jobs[*j].0.clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Retention never removes a queued, leased or dead-lettered job, and removes exactly the
    /// finished ones past the age or beyond the count.
    #[test]
    fn retention_removes_exactly_the_finished_jobs_past_age_or_count(
        ops in proptest::collection::vec(any_op(), 1..80),
        age in 0u64..400,
        cap in 0usize..4,
        later in 0u64..400,
        round in 1usize..4,
    ) {
        let mut q = Queue::default();
        let mut m = Model { given: vec![Vec::new(); WORKERS], ..Default::default() };
        for op in &ops {
            step(&mut q, &mut m, op)?;
        }
        let now = m.now + later;
        let policy = citadel_nexus::queue::Retention {
            max_age: Some(Duration::from_millis(age)),
            max_finished: Some(cap),
        };
        let mut want = model_retired(&m, age, cap, now);
        // In rounds of `round` jobs, as the server does, until a round comes back short.
        let mut gone = Vec::new();
        loop {
            let got = q.retire(&policy, now, round);
            let short = got.len() < round;
            gone.extend(got);
            if short {
                break;
            }
        }
        want.sort();
        gone.sort();
        prop_assert_eq!(&gone, &want);
        for (id, mj) in &m.jobs {
            let kept = q.get(id);
            if gone.contains(id) {
                prop_assert!(matches!(kept, Err(StoreError::NotFound(_))));
            } else {
                let r = kept.unwrap();
                prop_assert_eq!(r.state.is_final(), mj.final_state.is_some(), "{}", id);
            }
            if mj.final_state.is_none_or(|s| s == QueueState::Dead) {
                prop_assert!(!gone.contains(id), "{} is queued, leased or dead-lettered", id);
            }
        }
    }
}
