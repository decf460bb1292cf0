//! Builders shared by the journal's integration tests.
#![allow(dead_code)]

use citadel_journal::{EventKind, NewEvent};
use citadel_transports::{Job, JobId};

pub fn id(s: &str) -> JobId {
    JobId::new(s).unwrap()
}

pub fn job(s: &str) -> Job {
    Job {
        id: id(s),
        job_type: "noop".into(),
        payload: serde_json::json!({"n": 1}),
        ray_id: None,
        enqueued_at: None,
        attempt: 1,
        source: "test".into(),
    }
}

pub fn ev(job_id: &str, event: EventKind) -> NewEvent {
    NewEvent::new(id(job_id), "test", event).delivery("1-0")
}

pub fn received(job_id: &str) -> NewEvent {
    ev(job_id, EventKind::Received { job: job(job_id) })
}

/// The events of one successful run: received, started, succeeded, acked.
pub fn success(job_id: &str) -> Vec<NewEvent> {
    vec![
        received(job_id),
        ev(job_id, EventKind::Started { attempt: 1 }),
        ev(
            job_id,
            EventKind::Succeeded {
                result: serde_json::json!({"job": job_id}),
            },
        ),
        ev(job_id, EventKind::Acked),
    ]
}
