//! Retention of `citadel nexus serve` (docs/control-plane.md#retention) against the real server
//! and its sled store on disk: finished jobs go after their age and beyond the count, queued,
//! leased and dead-lettered ones stay, a purge removes only dead-lettered jobs, a finished job's
//! token events are folded, and the store's folder shrinks once retention has run.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::plane::*;

fn state(p: &Plane, id: &str) -> Option<String> {
    let r = p.call("GET", &format!("/api/v1/jobs/{id}"), None);
    (r.status == 200).then(|| r.json()["state"].as_str().unwrap().to_string())
}

fn finish(p: &Plane, id: &str) {
    let r = p.call(
        "POST",
        &format!("/api/v1/jobs/{id}/status"),
        Some(r#"{"status":"SUCCESS","output":"ok"}"#),
    );
    assert_eq!(r.status, 204, "{}", r.body);
}

/// Claims job `id` (the only one ready) with a long lease; its lease id.
fn claim_one(p: &Plane, id: &str) -> String {
    let got = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w", "max": 1, "lease_ms": 600_000})),
    );
    assert_eq!(got["jobs"][0]["id"], id, "{got}");
    got["jobs"][0]["lease"]["id"].as_str().unwrap().to_string()
}

fn dead_letter(p: &Plane, id: &str) {
    p.submit(json!({"id": id, "type": "t"}));
    let lease = claim_one(p, id);
    p.json(
        "POST",
        &format!("/api/v1/jobs/{id}/settle"),
        Some(json!({"lease_id": lease, "action": "dead_letter", "reason": "bad"})),
    );
    assert_eq!(state(p, id).as_deref(), Some("dead"));
}

#[test]
fn retention_removes_finished_jobs_after_their_age_and_never_a_queued_leased_or_dead_one() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start_args(&tmp.path().join("plane"), &["--retention", "1s"]);
    dead_letter(&p, "dead");
    p.submit(json!({"id": "leased", "type": "t"}));
    claim_one(&p, "leased");
    p.submit(json!({"id": "done", "type": "t"}));
    finish(&p, "done");
    p.submit(json!({"id": "queued", "type": "t"}));
    eventually(Duration::from_secs(10), "the finished job removed", || {
        state(&p, "done").is_none()
    });
    // Three more sweeps: the others stay.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(state(&p, "queued").as_deref(), Some("queued"));
    assert_eq!(state(&p, "leased").as_deref(), Some("leased"));
    assert_eq!(state(&p, "dead").as_deref(), Some("dead"));
    let r = p.call("GET", "/api/v1/jobs/done/events", None);
    assert_eq!(r.status, 404, "{}", r.body);
}

#[test]
fn the_count_cap_keeps_the_newest_finished_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start_args(
        &tmp.path().join("plane"),
        &["--retention", "1h", "--retention-max-jobs", "3"],
    );
    for i in 0..6 {
        let id = format!("j{i}");
        p.submit(json!({"id": id, "type": "t"}));
        finish(&p, &id);
        std::thread::sleep(Duration::from_millis(5));
    }
    p.submit(json!({"id": "waiting", "type": "t"}));
    // The cap is applied at the next sweep (every minute with `1h`): restart to sweep at start.
    let mut p = p;
    p.kill9();
    let p = Plane::start_args(
        &tmp.path().join("plane"),
        &["--retention", "1h", "--retention-max-jobs", "3"],
    );
    eventually(Duration::from_secs(10), "three finished jobs left", || {
        (0..3).all(|i| state(&p, &format!("j{i}")).is_none())
    });
    for i in 3..6 {
        assert_eq!(state(&p, &format!("j{i}")).as_deref(), Some("succeeded"));
    }
    assert_eq!(state(&p, "waiting").as_deref(), Some("queued"));
}

#[test]
fn a_dead_lettered_job_stays_until_purged_and_only_a_dead_one_can_be_purged() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start_args(&tmp.path().join("plane"), &["--retention", "1s"]);
    for id in ["d1", "d2", "d3"] {
        dead_letter(&p, id);
    }
    p.submit(json!({"id": "q", "type": "t"}));
    let r = p.call("POST", "/api/v1/dlq/purge", Some(r#"{"ids":["d1","q"]}"#));
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("job q is not dead-lettered (it is queued)"),
        "{}",
        r.body
    );
    assert_eq!(state(&p, "d1").as_deref(), Some("dead"), "nothing purged");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        state(&p, "d2").as_deref(),
        Some("dead"),
        "retention keeps it"
    );

    // The CLI: one by id, then every dead-lettered job.
    let data = tmp.path().join("cli");
    let run = |args: &[&str]| {
        let out = citadel(&data)
            .args(["jobs", "--nexus", &p.url(), "--token", &p.token])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["purge", "q"]);
    assert!(!ok && err.contains("not dead-lettered"), "{err}");
    let (ok, err) = run(&["purge", "d1"]);
    assert!(ok, "{err}");
    assert_eq!(state(&p, "d1"), None);
    let (ok, err) = run(&["purge", "--all-dead"]);
    assert!(ok, "{err}");
    assert_eq!((state(&p, "d2"), state(&p, "d3")), (None, None));
    assert_eq!(state(&p, "q").as_deref(), Some("queued"));
}

#[test]
fn a_finished_jobs_token_events_fold_into_a_few_records_and_the_result_stays() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let id = p.submit(json!({"type": "llm"}));
    let post = |ty: &str, data: Value| {
        let ev = json!({"version": "1.0", "type": ty, "jobId": id,
            "timestamp": "2026-01-01T00:00:00Z", "data": data});
        let r = p.call(
            "POST",
            &format!("/api/v1/jobs/{id}/events"),
            Some(&ev.to_string()),
        );
        assert_eq!(r.status, 204, "{}", r.body);
    };
    post("start", json!({"message": "go"}));
    for i in 0..500 {
        post("chunk", json!({"content": format!("t{i} "), "index": i}));
    }
    post("end", json!({"result": {"text": "all of it"}}));
    let before = p.json("GET", "/api/v1/stats", None)["events"]
        .as_u64()
        .unwrap();
    assert!(before >= 502, "{before}");
    finish(&p, &id);
    eventually(Duration::from_secs(10), "the events folded", || {
        p.json("GET", "/api/v1/stats", None)["events"].as_u64() == Some(3)
    });
    let r = p.events(&id, "");
    assert_eq!(
        sse_field(&r.body, "event"),
        ["start", "chunk", "end"],
        "{}",
        r.body
    );
    let chunk: Value = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .nth(1)
        .unwrap();
    let text: String = (0..500).map(|i| format!("t{i} ")).collect();
    assert_eq!(chunk["data"]["content"], text.as_str());
    assert_eq!(chunk["data"]["folded"], 500);
    assert_eq!(
        p.json("GET", &format!("/api/v1/jobs/{id}"), None)["result"]["text"],
        "all of it"
    );
}

#[test]
fn the_store_folder_shrinks_once_retention_has_removed_many_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let p = Plane::start_args(&dir, &["--retention", "2s"]);
    let payload = "x".repeat(1024);
    for i in 0..3000 {
        let id = format!("j{i}");
        p.submit(json!({"id": id, "type": "t", "payload": {"blob": payload}}));
        finish(&p, &id);
    }
    let full = p.json("GET", "/api/v1/stats", None)["bytes_on_disk"]
        .as_u64()
        .unwrap();
    eventually(Duration::from_secs(20), "every job removed", || {
        p.json("GET", "/api/v1/stats", None)["jobs"].as_u64() == Some(0)
    });
    let mut p = p;
    p.kill9();
    // The next start reclaims what the removed jobs took.
    let p = Plane::start_args(&dir, &["--retention", "2s"]);
    let after = p.json("GET", "/api/v1/stats", None)["bytes_on_disk"]
        .as_u64()
        .unwrap();
    eprintln!("store bytes on disk: {full} full, {after} after retention and a restart");
    let out = citadel(&tmp.path().join("cli"))
        .args(["nexus", "status", "--nexus", &p.url(), "--token", &p.token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("jobs      0") && text.contains("on disk"),
        "{text}"
    );
    assert!(
        after * 2 < full,
        "the store took {full} bytes full and {after} after retention"
    );
}

#[test]
fn the_store_size_is_on_metrics_for_the_admin_token_only() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "m1", "type": "t"}));
    let r = p.call("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let bytes: u64 = r
        .body
        .lines()
        .find_map(|l| l.strip_prefix("citadel_nexus_store_bytes "))
        .unwrap_or_else(|| panic!("no store size in {}", r.body))
        .parse()
        .unwrap();
    assert!(bytes > 0, "{}", r.body);
    assert!(
        r.body.contains("citadel_nexus_jobs{state=\"queued\"} 1"),
        "{}",
        r.body
    );
    let anon = raw(p.port, "GET", "/metrics", &[], None);
    assert_eq!(anon.status, 401, "{}", anon.body);
}
