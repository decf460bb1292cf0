//! `citadel work --transport auto` over a real redis-server (persistent, so it can be killed and
//! restarted without losing its streams) and a real `citadel nexus serve`: the worker falls back
//! to the control plane within the detection bound when Redis dies, keeps working, upgrades back
//! when Redis returns, and no job is lost or run twice across both switches (the journal says).

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use citadel_harness::redis::{self as harness, LocalRedis};
use serde_json::{json, Value};

use crate::support::plane::{self, Plane};
use crate::support::worker::{self, Worker};

/// The state of a job on the control plane.
fn plane_state(p: &Plane, id: &str) -> String {
    p.json("GET", &format!("/api/v1/jobs/{id}"), None)["state"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Every journal event of the worker's data dir, as `(job id, event type)`.
fn journal_events(data: &std::path::Path) -> Vec<(String, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["journal", "--data-dir"])
        .arg(data)
        .arg("export")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["job_id"].as_str().unwrap().to_string(),
                v["event"]["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn switches(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains("transport switch"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_when_redis_dies_and_upgrades_back_without_losing_or_repeating_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let redis_dir = tmp.path().join("redis");
    std::fs::create_dir_all(&redis_dir).unwrap();
    let mut redis = LocalRedis::start_persistent(&redis_dir).await.unwrap();
    let plane_dir = tmp.path().join("plane");
    std::fs::create_dir_all(&plane_dir).unwrap();
    let plane = Plane::start(&plane_dir);
    let server_url = redis.url();
    let mut c = redis::Client::open(server_url.clone())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();

    let data = tmp.path().join("worker");
    std::fs::create_dir_all(&data).unwrap();
    let mut worker = Worker::start_on(
        &["--redis-url", &server_url],
        &data,
        &[
            "--transport",
            "auto",
            "--nexus-url",
            &plane.url(),
            "--nexus-token",
            &plane.token,
            "--fallback-after",
            "1s",
            "--upgrade-after",
            "2s",
            "--probe-interval",
            "250ms",
            "--lease",
            "5s",
            "--concurrency",
            "4",
        ],
    );

    // Phase 1: Redis is the best healthy transport.
    let mut all = Vec::new();
    for i in 0..10 {
        let id = format!("r1-{i}");
        worker::submit(&mut c, &id, "echo", json!({"i": i})).await;
        all.push(id);
    }
    // A job that is still running when Redis dies: its ack must go through once Redis is back.
    worker::submit(&mut c, "r1-long", "sleep", json!({"ms": 2500})).await;
    all.push("r1-long".into());
    for id in all.iter().filter(|id| *id != "r1-long") {
        worker::wait_for(&mut c, id, "end", Duration::from_secs(20)).await;
    }
    worker::wait_for(&mut c, "r1-long", "start", Duration::from_secs(20)).await;
    assert!(switches(&worker.logs()).is_empty(), "{}", worker.logs());

    // Phase 2: Redis dies; the control plane takes over within the bound.
    redis.stop();
    let killed = Instant::now();
    for i in 0..10 {
        let id = format!("n-{i}");
        plane.submit(json!({"id": id, "type": "echo", "payload": {"i": i}}));
        all.push(id);
    }
    plane::eventually(
        Duration::from_secs(20),
        "the first nexus job is done",
        || plane_state(&plane, "n-0") == "succeeded",
    );
    let fell_back = killed.elapsed();
    assert!(
        fell_back < Duration::from_secs(10),
        "fallback took {fell_back:?}"
    );
    plane::eventually(Duration::from_secs(20), "every nexus job is done", || {
        (0..10).all(|i| plane_state(&plane, &format!("n-{i}")) == "succeeded")
    });
    let log = worker.logs();
    let first = switches(&log);
    assert_eq!(first.len(), 1, "{log}");
    assert!(
        first[0].contains("from=redis") && first[0].contains("to=nexus"),
        "{}",
        first[0]
    );

    // Phase 3: Redis returns with its streams; the worker upgrades back.
    redis.restart().await.unwrap();
    let mut c = redis::Client::open(server_url.clone())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for i in 0..10 {
        let id = format!("r2-{i}");
        worker::submit(&mut c, &id, "echo", json!({"i": i})).await;
        all.push(id);
    }
    for i in 0..10 {
        worker::wait_for(&mut c, &format!("r2-{i}"), "end", Duration::from_secs(30)).await;
    }
    worker::wait_for(&mut c, "r1-long", "end", Duration::from_secs(30)).await;
    worker::eventually(Duration::from_secs(40), "r1-long acked in redis", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
    let log = worker.logs();
    let both = switches(&log);
    assert_eq!(both.len(), 2, "{log}");
    assert!(
        both[1].contains("from=nexus") && both[1].contains("to=redis"),
        "{}",
        both[1]
    );

    // Drain and check the whole history in the journal: every job ran once and was acked once.
    worker.signal(rustix::process::Signal::TERM);
    assert!(worker.wait_exit(Duration::from_secs(40)).success());
    let mut per_job: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (job, ty) in journal_events(&data) {
        per_job.entry(job).or_default().push(ty);
    }
    for id in &all {
        let evs = per_job
            .get(id)
            .unwrap_or_else(|| panic!("{id} was lost: {per_job:?}"));
        let count = |t: &str| evs.iter().filter(|e| *e == t).count();
        assert_eq!(
            count("started"),
            1,
            "{id} ran {} times: {evs:?}",
            count("started")
        );
        assert_eq!(count("succeeded"), 1, "{id}: {evs:?}");
        assert_eq!(count("acked"), 1, "{id}: {evs:?}");
    }
}
