//! The HTTP API of `citadel nexus serve`: docs/wire-format.md#nexus-http byte for byte, auth, malformed requests,
//! leases and their expiry, long-poll, SSE events and restart without loss.

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::plane::*;

fn plane() -> (tempfile::TempDir, Plane) {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    (tmp, p)
}

#[test]
fn the_nexus_wire_format_is_served_byte_for_byte() {
    let (_tmp, p) = plane();
    // Nothing queued: 204 and no body.
    let r = p.call("GET", "/api/v1/jobs/next", None);
    assert_eq!((r.status, r.body.as_str()), (204, ""));

    p.submit(
        json!({"id": "job-1", "type": "echo", "payload": {"msg": "hi", "n": 2, "o": {"a": true}}}),
    );
    let r = p.call("GET", "/api/v1/jobs/next", None);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.body,
        r#"{"id":"job-1","type":"echo","payload":{"msg":"hi","n":"2","o":"{\"a\":true}"}}"#
    );
    assert_eq!(r.header("x-citadel-attempt"), Some("1"));
    assert!(r.header("x-citadel-lease-id").is_some());
    assert_eq!(
        p.call("GET", "/api/v1/jobs/next", None).status,
        204,
        "leased, not handed out twice"
    );

    let r = p.call(
        "POST",
        "/api/v1/jobs/job-1/status",
        Some(r#"{"status":"SUCCESS","output":"done"}"#),
    );
    assert_eq!((r.status, r.body.as_str()), (204, ""));
    let job = p.json("GET", "/api/v1/jobs/job-1", None);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["output"], "done");

    p.submit(json!({"id": "job-2", "type": "echo"}));
    assert_eq!(p.call("GET", "/api/v1/jobs/next", None).status, 200);
    let r = p.call(
        "POST",
        "/api/v1/jobs/job-2/status",
        Some(r#"{"status":"FAILURE","output":"boom"}"#),
    );
    assert_eq!(r.status, 204);
    assert_eq!(p.json("GET", "/api/v1/jobs/job-2", None)["state"], "failed");

    // Nodes: [{id, name, ip_address, status, last_seen}], exactly those keys.
    p.json(
        "POST",
        "/api/v1/nodes/heartbeat",
        Some(json!({"id": "n-1", "name": "gpu-box"})),
    );
    let r = p.call("GET", "/api/v1/nodes", None);
    assert_eq!(r.status, 200);
    let nodes = r.json();
    let node = &nodes.as_array().unwrap()[0];
    let keys: Vec<&str> = node
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, ["id", "ip_address", "last_seen", "name", "status"]);
    assert_eq!(node["id"], "n-1");
    assert_eq!(node["name"], "gpu-box");
    assert_eq!(node["ip_address"], "127.0.0.1");
    assert_eq!(node["status"], "online");
    assert!(humantime::parse_rfc3339(node["last_seen"].as_str().unwrap()).is_ok());
}

#[test]
fn every_api_needs_the_token() {
    let (_tmp, p) = plane();
    let mode = std::fs::metadata(p.dir.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let wrong = format!("Bearer {}x", p.token);
    let basic = format!("Basic {}", p.token);
    for (method, path, body) in [
        ("GET", "/api/v1/jobs/next", None),
        ("GET", "/api/v1/nodes", None),
        ("POST", "/api/v1/jobs", Some(r#"{"type":"echo"}"#)),
        (
            "POST",
            "/api/v1/jobs/x/status",
            Some(r#"{"status":"SUCCESS","output":""}"#),
        ),
        ("GET", "/api/v1/jobs", None),
        ("GET", "/api/v1/health", None),
        ("GET", "/api/v1/dlq", None),
    ] {
        for auth in [None, Some(wrong.as_str()), Some(basic.as_str())] {
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", *a)).collect();
            let r = raw(p.port, method, path, &headers, body);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert!(r.json()["error"].as_str().unwrap().contains("token"));
        }
    }
    assert!(
        p.json("GET", "/api/v1/jobs", None)["jobs"]
            .as_array()
            .unwrap()
            .is_empty(),
        "nothing got in"
    );
}

#[test]
fn malformed_requests_get_400_with_a_message() {
    let (_tmp, p) = plane();
    for (path, body) in [
        ("/api/v1/jobs", "{not json"),
        ("/api/v1/jobs", r#"{"payload":{}}"#),
        ("/api/v1/jobs", r#"{"type":"echo","payload":[1]}"#),
        ("/api/v1/jobs", r#"{"type":""}"#),
        ("/api/v1/jobs", r#"{"type":"echo","id":"a\nb"}"#),
        ("/api/v1/jobs/claim", r#"{"max":1}"#),
        ("/api/v1/jobs/x/status", r#"{"status":"MAYBE"}"#),
        (
            "/api/v1/jobs/x/settle",
            r#"{"lease_id":"l","action":"explode"}"#,
        ),
    ] {
        let r = p.call("POST", path, Some(body));
        assert_eq!(r.status, 400, "{path} {body}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(!msg.is_empty());
    }
    let big = format!(
        r#"{{"type":"echo","payload":{{"x":"{}"}}}}"#,
        "a".repeat(17 << 20)
    );
    let r = p.call("POST", "/api/v1/jobs", Some(&big));
    assert_eq!(r.status, 413, "an oversized body is refused");
    let r = p.call("GET", "/api/v1/jobs/nope", None);
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].is_string());
    p.submit(json!({"id": "dup", "type": "echo"}));
    assert_eq!(
        p.call(
            "POST",
            "/api/v1/jobs",
            Some(r#"{"id":"dup","type":"echo"}"#)
        )
        .status,
        409
    );
}

fn claim(p: &Plane, worker: &str, lease_ms: u64, wait_ms: u64) -> Vec<Value> {
    p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": worker, "max": 4, "wait_ms": wait_ms, "lease_ms": lease_ms})),
    )["jobs"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn leases_expire_count_attempts_and_end_in_the_dead_letter_list() {
    let (_tmp, p) = plane();
    p.submit(json!({"id": "L", "type": "sleep", "payload": {"ms": 1}, "maxAttempts": 2}));
    let got = claim(&p, "w1", 400, 0);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["attempts"], 1);
    let lease1 = got[0]["lease"]["id"].as_str().unwrap().to_string();
    // Renewed while the worker lives...
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(200));
        p.json(
            "POST",
            "/api/v1/jobs/L/lease",
            Some(json!({"lease_id": lease1, "lease_ms": 400})),
        );
    }
    assert_eq!(p.json("GET", "/api/v1/jobs/L", None)["state"], "leased");
    // ...and back in the queue once it stops renewing, with the attempt counted.
    eventually(Duration::from_secs(5), "the lease expires", || {
        p.json("GET", "/api/v1/jobs/L", None)["state"] == "queued"
    });
    let got = claim(&p, "w2", 300, 0);
    assert_eq!(got[0]["attempts"], 2);
    // The first worker's late settlement is refused: another worker holds the job.
    let r = p.call(
        "POST",
        "/api/v1/jobs/L/settle",
        Some(&json!({"lease_id": lease1, "action": "ack"}).to_string()),
    );
    assert_eq!(r.status, 409, "{}", r.body);
    let r = p.call(
        "POST",
        "/api/v1/jobs/L/lease",
        Some(&json!({"lease_id": lease1}).to_string()),
    );
    assert_eq!(r.status, 409);
    // The second expiry is the last allowed attempt: dead-lettered.
    eventually(Duration::from_secs(5), "the job is dead-lettered", || {
        p.json("GET", "/api/v1/jobs/L", None)["state"] == "dead"
    });
    let dlq = p.json("GET", "/api/v1/dlq", None);
    assert_eq!(dlq["jobs"][0]["id"], "L");
    assert!(dlq["jobs"][0]["dead_reason"]
        .as_str()
        .unwrap()
        .contains("lease expired"));
    let r = p.json("POST", "/api/v1/dlq/L/requeue", None);
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );

    // Settlements: retry counts an attempt and waits its delay; release gives one back.
    let got = claim(&p, "w3", 10_000, 0);
    let lease = got[0]["lease"]["id"].as_str().unwrap().to_string();
    let r = p.json(
        "POST",
        "/api/v1/jobs/L/settle",
        Some(json!({"lease_id": lease, "action": "retry", "delay_ms": 300, "errors": ["e1"]})),
    );
    assert_eq!(r["state"], "queued");
    assert!(
        claim(&p, "w3", 10_000, 0).is_empty(),
        "not before its delay"
    );
    let got = claim(&p, "w3", 10_000, 2000);
    assert_eq!(got[0]["attempts"], 2);
    let lease = got[0]["lease"]["id"].as_str().unwrap().to_string();
    p.json(
        "POST",
        "/api/v1/jobs/L/settle",
        Some(json!({"lease_id": lease, "action": "release"})),
    );
    let got = claim(&p, "w4", 10_000, 0);
    assert_eq!(got[0]["attempts"], 2, "a release does not count an attempt");
    let lease = got[0]["lease"]["id"].as_str().unwrap().to_string();
    p.json(
        "POST",
        "/api/v1/jobs/L/settle",
        Some(json!({"lease_id": lease, "action": "ack"})),
    );
    assert_eq!(p.json("GET", "/api/v1/jobs/L", None)["state"], "succeeded");
    // Idempotent.
    p.json(
        "POST",
        "/api/v1/jobs/L/settle",
        Some(json!({"lease_id": lease, "action": "ack"})),
    );
}

#[test]
fn a_batch_applies_each_operation_on_its_own_and_answers_each_in_order() {
    let (_tmp, p) = plane();
    let health = p.json("GET", "/api/v1/health", None);
    assert!(health["features"]
        .as_array()
        .unwrap()
        .contains(&json!("batch")));
    for id in ["A", "B"] {
        p.submit(json!({"id": id, "type": "echo", "payload": {}}));
    }
    let got = claim(&p, "w1", 60_000, 0);
    let lease = |id: &str| {
        let j = got.iter().find(|j| j["id"] == id).unwrap();
        j["lease"]["id"].as_str().unwrap().to_string()
    };
    let ev = |ty: &str, id: &str, data: Value| json!({"type": ty, "jobId": id, "data": data});
    let ops = json!({"ops": [
        {"op": "events", "job": "A", "lease_id": lease("A"),
         "events": [ev("start", "A", json!({})), ev("end", "A", json!({"result": {"ok": 1}}))]},
        {"op": "settle", "job": "B", "settle": {"lease_id": "stale", "action": "ack"}},
        {"op": "settle", "job": "A", "settle": {"lease_id": lease("A"), "action": "ack"}},
        {"op": "events", "job": "nope", "lease_id": "x", "events": []},
        {"op": "settle", "job": "B", "settle": {"lease_id": lease("B"), "action": "launch"}},
    ]});
    let r = p.json("POST", "/api/v1/jobs/batch", Some(ops));
    let statuses: Vec<u64> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [200, 409, 200, 404, 400], "{r}");
    assert!(r["results"][1]["error"].as_str().unwrap().contains("lease"));
    let a = p.json("GET", "/api/v1/jobs/A", None);
    assert_eq!(
        (a["state"].as_str(), &a["result"], a["events"].as_u64()),
        (Some("succeeded"), &json!({"ok": 1}), Some(2))
    );
    assert_eq!(p.json("GET", "/api/v1/jobs/B", None)["state"], "leased");
    // Too many operations: the whole batch is refused, nothing applied.
    let op =
        json!({"op": "settle", "job": "B", "settle": {"lease_id": lease("B"), "action": "ack"}});
    let many = json!({"ops": vec![op; 257]}).to_string();
    let r = p.call("POST", "/api/v1/jobs/batch", Some(&many));
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(p.json("GET", "/api/v1/jobs/B", None)["state"], "leased");
}

#[test]
fn long_poll_hands_a_job_over_as_soon_as_it_is_submitted() {
    let (_tmp, p) = plane();
    let port = p.port;
    let token = p.token.clone();
    for path in ["/api/v1/jobs/next?wait=10", "claim"] {
        let token = token.clone();
        let waiter = std::thread::spawn(move || {
            let auth = format!("Bearer {token}");
            let started = Instant::now();
            let r = if path == "claim" {
                raw(
                    port,
                    "POST",
                    "/api/v1/jobs/claim",
                    &[("Authorization", &auth)],
                    Some(r#"{"worker":"w","max":1,"wait_ms":10000}"#),
                )
            } else {
                raw(port, "GET", path, &[("Authorization", &auth)], None)
            };
            (r, Instant::now(), started)
        });
        std::thread::sleep(Duration::from_millis(400));
        let submitted = Instant::now();
        let id = p.submit(json!({"type": "noop"}));
        let (r, answered, started) = waiter.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.body.contains(&id));
        let latency = answered.duration_since(submitted);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the long poll answered early"
        );
        assert!(
            latency < Duration::from_secs(2),
            "handed over after {latency:?}"
        );
    }
    // An empty long-poll waits about its time, then 204.
    let started = Instant::now();
    assert_eq!(
        p.call("GET", "/api/v1/jobs/next?wait=0.5", None).status,
        204
    );
    assert!(started.elapsed() >= Duration::from_millis(450));
}

#[test]
fn a_claim_asking_for_claimed_events_records_them_under_the_new_lease() {
    let (_tmp, p) = plane();
    let health = p.json("GET", "/api/v1/health", None);
    assert!(
        health["features"]
            .as_array()
            .unwrap()
            .contains(&json!("claim_event")),
        "{health}"
    );
    let id = p.submit(json!({"type": "echo", "rayId": "r-7"}));
    let bad = json!({"worker": "w", "claimed": "yes"}).to_string();
    assert_eq!(p.call("POST", "/api/v1/jobs/claim", Some(&bad)).status, 400);
    let body = json!({"worker": "w", "max": 4, "claimed": {"agent_version": "x"}});
    let jobs = p.json("POST", "/api/v1/jobs/claim", Some(body))["jobs"].clone();
    assert_eq!(jobs[0]["id"], id.as_str());
    let lease = jobs[0]["lease"]["id"].as_str().unwrap().to_string();
    let start = json!({"version": "1.0", "type": "start", "jobId": id, "timestamp": "2026-01-01T00:00:00Z", "data": {}});
    let path = format!("/api/v1/jobs/{id}/events?lease_id={lease}");
    assert_eq!(p.call("POST", &path, Some(&start.to_string())).status, 204);
    p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/status"),
        Some(r#"{"status":"SUCCESS","output":""}"#),
    );
    let r = p.events(&id, "");
    assert_eq!(
        sse_field(&r.body, "event"),
        ["claimed", "start"],
        "{}",
        r.body
    );
    assert!(
        r.body.contains(r#""agent_version":"x""#) && r.body.contains(r#""rayId":"r-7""#),
        "{}",
        r.body
    );
}

#[test]
fn events_stream_as_sse_and_resume_with_last_event_id() {
    let (_tmp, p) = plane();
    let id = p.submit(json!({"type": "echo", "rayId": "r-1"}));
    for (ty, data) in [
        ("claimed", json!({"agent_version": "x"})),
        ("start", json!({"message": "go"})),
        ("chunk", json!({"content": "a", "index": 0})),
    ] {
        let ev = json!({"version": "1.0", "type": ty, "jobId": id, "timestamp": "2026-01-01T00:00:00Z", "data": data});
        let r = p.call(
            "POST",
            &format!("/api/v1/jobs/{id}/events"),
            Some(&ev.to_string()),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    }
    let r = p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/events"),
        Some(r#"{"type":"end","jobId":"other"}"#),
    );
    assert_eq!(r.status, 400);
    // Final, so the stream ends after the last event.
    p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/status"),
        Some(r#"{"status":"SUCCESS","output":""}"#),
    );
    let auth = format!("Bearer {}", p.token);
    let r = raw(
        p.port,
        "GET",
        &format!("/api/v1/jobs/{id}/events"),
        &[("Authorization", &auth), ("Last-Event-ID", "0")],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse_field(&r.body, "id"), ["1", "2"]);
    assert!(r.body.contains("event: chunk\ndata: {"), "{}", r.body);
    let r = p.events(&id, "?after=1");
    assert_eq!(sse_field(&r.body, "id"), ["2"]);
}

#[test]
fn a_killed_and_restarted_control_plane_loses_no_submitted_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let mut ids = Vec::new();
    for i in 0..40 {
        ids.push(p.submit(json!({"type": "echo", "payload": {"i": i}})));
    }
    let leased = claim(&p, "w", 60_000, 0);
    let leased_id = leased[0]["id"].as_str().unwrap().to_string();
    p.kill9();
    let port = p.port;
    let p = Plane::start_on(&dir, port);
    let all = p.json("GET", "/api/v1/jobs?limit=1000", None);
    let mut got: Vec<String> = all["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every submitted job is still there");
    let job = p.json("GET", &format!("/api/v1/jobs/{leased_id}"), None);
    assert_eq!(job["state"], "leased", "leases survive too");
    // Submission order survives: the first four went out before the kill, the fifth is next.
    let next = claim(&p, "w", 60_000, 0);
    assert_eq!(next.len(), 4);
    assert_eq!(next[0]["payload"]["i"], 4);
}

#[test]
fn concurrent_submits_and_claims_are_all_answered() {
    // Regression: the store once flushed with sled's flush_async, which hung under concurrency.
    let (_tmp, p) = plane();
    let (port, token) = (p.port, p.token.clone());
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let token = token.clone();
            std::thread::spawn(move || {
                let auth = format!("Bearer {token}");
                for i in 0..40 {
                    let body = format!(r#"{{"id":"c-{t}-{i}","type":"noop"}}"#);
                    let r = raw(
                        port,
                        "POST",
                        "/api/v1/jobs",
                        &[("Authorization", &auth)],
                        Some(&body),
                    );
                    assert_eq!(r.status, 201, "{}", r.body);
                    let r = raw(
                        port,
                        "GET",
                        "/api/v1/jobs/next",
                        &[("Authorization", &auth)],
                        None,
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let leased = p.json("GET", "/api/v1/jobs?state=leased&limit=10000", None);
    assert_eq!(leased["jobs"].as_array().unwrap().len(), 640);
}
