//! Fail-stop on a full disk: a worker whose journal folder is a 3 MiB tmpfs takes jobs with
//! 100 KB payloads until a journal write fails; it must then stop taking work, hand back what it
//! claimed, log one clear error and exit non-zero, while a second, healthy worker completes every
//! job, none running more than twice. A control plane whose store fills answers 503 (the write
//! was not made durable; a retry can succeed), never 500 and never a success. Needs root (mount);
//! under `CI=true` a failed mount is a failure, elsewhere the test is skipped with the reason.

use std::process::Command;
use std::time::{Duration, Instant};

use citadel_harness::redis::Server;
use citadel_harness::tmpfs::Tmpfs;

use crate::support::plane::Plane;
use crate::support::worker::{events, submit, Worker};

const JOBS: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_with_a_full_journal_stops_and_a_healthy_one_finishes_every_job() {
    let full = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&full.path().join("journal"), "3m") else {
        return;
    };
    let server = Server::start().await;
    let mut c = server.conn().await;
    let ids: Vec<String> = (0..JOBS).map(|i| format!("full-{i}")).collect();
    let text = "p".repeat(100_000);
    for id in &ids {
        submit(&mut c, id, "echo", serde_json::json!({ "text": text })).await;
    }
    let mut a = Worker::start(&server, full.path(), &["--concurrency", "4"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let healthy = tempfile::tempdir().unwrap();
    let _b = Worker::start(&server, healthy.path(), &["--node-name", "node-b"]);

    let status = a.wait_exit(Duration::from_secs(60));
    let logs = a.logs();
    assert!(!status.success(), "the full worker exited 0\n{logs}");
    assert!(
        logs.contains("cannot be written") && logs.contains("left on its file system"),
        "no clear error in the full worker's log\n{logs}"
    );
    let started = Instant::now();
    for id in &ids {
        loop {
            let evs = events(&mut c, id).await;
            let runs = evs.iter().filter(|e| e["type"] == "start").count();
            assert!(runs <= 2, "{id} ran {runs} times");
            if evs.iter().any(|e| e["type"] == "end") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{id} never completed; events {:?}\nfull worker:\n{logs}",
                evs.iter().map(|e| e["type"].clone()).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[test]
fn a_control_plane_with_a_full_disk_answers_503_and_keeps_what_it_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nexus");
    let Some(_tmpfs) = Tmpfs::mount(&data, "4m") else {
        return;
    };
    let plane = Plane::start(&data);
    let text = "p".repeat(200_000);
    let mut acknowledged = Vec::new();
    let refused = loop {
        let body = serde_json::json!({"type": "echo", "payload": {"text": text}}).to_string();
        let r = plane.call("POST", "/api/v1/jobs", Some(&body));
        if r.status != 201 && r.status != 200 {
            break r;
        }
        acknowledged.push(r.json()["id"].as_str().unwrap().to_string());
        assert!(acknowledged.len() < 200, "a 4 MiB store took 40 MB of jobs");
    };
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(refused.body.contains("storage"), "{}", refused.body);
    for id in &acknowledged {
        let r = plane.call("GET", &format!("/api/v1/jobs/{id}"), None);
        assert_eq!(r.status, 200, "{id}: {}", r.body);
    }
}

/// While a fail-stopped worker drains (a long job still running), it reports why it is not
/// ready: `/readyz` answers 503 with the journal failure, and `citadel status` prints it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fail_stopped_worker_reports_not_ready_with_the_reason_while_it_drains() {
    let full = tempfile::tempdir().unwrap();
    let Some(_tmpfs) = Tmpfs::mount(&full.path().join("journal"), "3m") else {
        return;
    };
    let server = Server::start().await;
    let mut c = server.conn().await;
    submit(&mut c, "long", "sleep", serde_json::json!({"ms": 20_000})).await;
    let text = "p".repeat(100_000);
    for i in 0..40 {
        submit(
            &mut c,
            &format!("big-{i}"),
            "echo",
            serde_json::json!({ "text": text }),
        )
        .await;
    }
    let port = crate::support::plane::free_port().to_string();
    let listen = format!("127.0.0.1:{port}");
    let mut a = Worker::start(
        &server,
        full.path(),
        &["--concurrency", "4", "--status-listen", &listen],
    );
    let readyz = format!("http://{listen}/readyz");
    let http = citadel::handlers::http_client(Duration::from_secs(2)).unwrap();
    let started = Instant::now();
    let why = loop {
        if let Ok(r) = http.get(&readyz).send().await {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            if status == 503 && body.contains("cannot be written") {
                break body;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "/readyz never reported the journal failure\n{}",
            a.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(why.contains("left on its file system"), "{why}");
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("--data-dir")
        .arg(full.path())
        .arg("status")
        .env_remove("CITADEL_DATA_DIR")
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("journal    FAILED"), "{shown}");
    let status = a.wait_exit(Duration::from_secs(60));
    assert!(!status.success(), "the fail-stopped worker exited 0");
}
