//! The lease fences a job: events and settlements are accepted only from the current lease (409
//! otherwise), the final state is the settling lease's own outcome, a settlement carries the
//! cancellation outcome even when the `cancelled` event never arrived, and the attempts a producer
//! allows reach the worker with the claim. Each against a real `citadel nexus serve`.

use citadel_transports::{Incoming, JobSource, NexusConfig, NexusSource};
use serde_json::{json, Value};

use crate::support::plane::*;

fn plane() -> (tempfile::TempDir, Plane) {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    (tmp, p)
}

/// Claims one job for `worker`; returns (job id, lease id).
fn claim(p: &Plane, worker: &str, lease_ms: u64) -> (String, String) {
    let v = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": worker, "wait_ms": 5000, "lease_ms": lease_ms})),
    );
    let job = &v["jobs"][0];
    (
        job["id"].as_str().unwrap().to_string(),
        job["lease"]["id"].as_str().unwrap().to_string(),
    )
}

fn event(p: &Plane, id: &str, lease: &str, ty: &str, data: Value) -> u16 {
    let ev = json!({"version": "1.0", "type": ty, "jobId": id,
        "timestamp": "2026-01-01T00:00:00Z", "data": data});
    p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/events?lease_id={lease}"),
        Some(&ev.to_string()),
    )
    .status
}

fn settle(p: &Plane, id: &str, body: Value) -> (u16, Value) {
    let r = p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/settle"),
        Some(&body.to_string()),
    );
    (
        r.status,
        serde_json::from_str(&r.body).unwrap_or(Value::Null),
    )
}

#[test]
fn a_stale_lease_can_neither_report_nor_settle() {
    let (_tmp, p) = plane();
    let id = p.submit(json!({"type": "echo"}));
    let (_, stale) = claim(&p, "worker-a", 200);
    // Worker A goes silent; its lease expires and B claims the job.
    let (again, current) = claim(&p, "worker-b", 60_000);
    assert_eq!(again, id);
    assert_ne!(stale, current);
    assert_eq!(
        event(&p, &id, &current, "end", json!({"result": {"by": "b"}})),
        204
    );
    assert_eq!(
        event(
            &p,
            &id,
            &stale,
            "error",
            json!({"error": "late", "retryable": false})
        ),
        409,
        "a late event from the expired lease is refused"
    );
    let (status, job) = settle(&p, &id, json!({"lease_id": current, "action": "ack"}));
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "succeeded", "B's own end decides: {job}");
    assert_eq!(job["result"], json!({"by": "b"}));
    let (status, _) = settle(&p, &id, json!({"lease_id": stale, "action": "ack"}));
    assert_eq!(status, 409, "a late settlement from the expired lease");
    let (status, job) = settle(&p, &id, json!({"lease_id": current, "action": "ack"}));
    assert_eq!(
        (status, job["state"].as_str()),
        (200, Some("succeeded")),
        "the settling lease's repeat is idempotent"
    );
    assert_eq!(
        event(&p, &id, &current, "end", json!({"result": {}})),
        409,
        "no event after the job is final"
    );
}

#[test]
fn the_settlement_keeps_the_cancellation_when_its_event_was_lost() {
    let (_tmp, p) = plane();
    let id = p.submit(json!({"type": "echo"}));
    let (_, lease) = claim(&p, "worker-a", 60_000);
    p.json("POST", &format!("/api/v1/jobs/{id}/cancel"), None);
    // The worker's `cancelled` event never arrived; its settlement says how the attempt ended.
    let (status, job) = settle(
        &p,
        &id,
        json!({"lease_id": lease, "action": "ack", "outcome": "cancelled"}),
    );
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["state"], "cancelled", "{job}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempts_allowed_at_submit_reach_the_worker_with_the_claim() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "m-1", "type": "fail", "maxAttempts": 1}));
    let mut c = NexusConfig::new(p.url(), "worker-1");
    c.token = Some(p.token.clone());
    let src = NexusSource::connect(c).await.unwrap();
    let got = next_n(&src, 1, 1).await;
    let Incoming::Job(d) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(
        d.job.payload["maxAttempts"],
        json!(1),
        "the runner reads the limit from the job: {}",
        d.job.payload
    );
    let _ = src.close().await;
}
