//! The status server of a real `citadel work` on a real redis-server: /healthz, /readyz (and
//! how it turns unready when Redis goes away), /status, /metrics (parsed strictly), the Redis
//! heartbeat of docs/wire-format.md#heartbeat, `citadel status`, and the nexus heartbeat on the embedded control
//! plane.

use std::process::Command;
use std::time::Duration;

use citadel_harness::redis::{self as harness, Server};
use citadel_transports::{JobSource, NexusConfig, NexusSource};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use super::servers::GlinerServer;
use crate::support::worker::{self, Worker};

const BIN: &str = env!("CARGO_BIN_EXE_citadel");

async fn get(url: &str) -> (u16, String) {
    let http = citadel::handlers::http_client(Duration::from_secs(2)).unwrap();
    let r = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn citadel_status(data: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["status", "--data-dir"])
        .arg(data)
        .args(extra)
        .env_remove("CITADEL_DATA_DIR")
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_server_heartbeat_and_metrics_of_a_redis_worker() {
    let mut server = Server::start().await;
    let mut c = server.conn().await;
    let gliner = GlinerServer::start(0).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let worker = Worker::start(
        &server,
        &data,
        &[
            "--status-listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "300ms",
            "--extraction-url",
            &gliner.url(),
        ],
    );
    let addr_file = data.join("status.addr");
    worker::eventually(Duration::from_secs(20), "status.addr", || {
        let f = addr_file.clone();
        async move { f.exists() }
    })
    .await;
    let base = format!(
        "http://{}",
        std::fs::read_to_string(&addr_file).unwrap().trim()
    );
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");

    // The heartbeat is published as well as appended: subscribe before it comes.
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("node:status:node-a").await.unwrap();

    assert_eq!(get(&format!("{base}/healthz")).await.0, 200);
    worker::eventually(Duration::from_secs(20), "/readyz answers 200", || {
        let url = format!("{base}/readyz");
        async move { get(&url).await.0 == 200 }
    })
    .await;

    // Jobs: two echoes, a failure that is dead-lettered at once, an extraction.
    worker::submit(&mut c, "e-1", "echo", json!({"x": 1})).await;
    worker::submit(&mut c, "e-2", "echo", json!({"x": 2})).await;
    worker::submit(&mut c, "f-1", "fail", json!({"maxAttempts": 1})).await;
    worker::submit(
        &mut c,
        "g-1",
        "GLINER_EXTRACTION",
        json!({"text": "Ada wrote", "labels": ["person"]}),
    )
    .await;
    for (job, ty) in [
        ("e-1", "end"),
        ("e-2", "end"),
        ("f-1", "error"),
        ("g-1", "end"),
    ] {
        worker::wait_for(&mut c, job, ty, Duration::from_secs(20)).await;
    }
    let g = worker::wait_for(&mut c, "g-1", "end", Duration::from_secs(1)).await;
    let end = g.iter().find(|e| e["type"] == "end").unwrap();
    assert_eq!(end["data"]["result"]["entities"][0]["text"], "Ada");

    // /metrics: strict text format and the counts of what just ran.
    let started = std::time::Instant::now();
    let m = loop {
        let (code, text) = get(&format!("{base}/metrics")).await;
        assert_eq!(code, 200);
        let e = super::prom::parse(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let done = e.value("citadel_dead_letters_total", &[]) == Some(1.0)
            && e.value(
                "citadel_jobs_total",
                &[("type", "GLINER_EXTRACTION"), ("outcome", "succeeded")],
            ) == Some(1.0);
        if done {
            break e;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "settled jobs missing from /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        m.value(
            "citadel_jobs_total",
            &[("type", "echo"), ("outcome", "succeeded")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "citadel_jobs_total",
            &[("type", "fail"), ("outcome", "failed")]
        ),
        Some(1.0)
    );
    assert_eq!(
        m.value("citadel_job_duration_seconds_count", &[("type", "echo")]),
        Some(2.0)
    );
    assert_eq!(
        m.value(
            "citadel_job_duration_seconds_bucket",
            &[("type", "echo"), ("le", "+Inf")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m.value("citadel_transport_active", &[("transport", "redis")]),
        Some(1.0)
    );
    assert_eq!(m.value("citadel_transport_switches_total", &[]), Some(0.0));
    assert_eq!(m.value("citadel_worker_consuming", &[]), Some(1.0));
    assert_eq!(m.value("citadel_jobs_in_flight", &[]), Some(0.0));
    assert_eq!(m.value("citadel_jobs_received_total", &[]), Some(4.0));
    assert!(
        m.value("citadel_journal_append_seconds_count", &[])
            .unwrap()
            >= 4.0
    );
    assert_eq!(m.types["citadel_job_queue_wait_seconds"], "histogram");
    for family in [
        "citadel_lease_renewals_total",
        "citadel_redeliveries_total",
        "citadel_gpus",
    ] {
        assert!(m.value(family, &[]).is_some(), "{family} missing");
    }

    // /status: the status message.
    let (code, text) = get(&format!("{base}/status")).await;
    assert_eq!(code, 200);
    let s: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(s["nodeId"], "node-a");
    assert_eq!(s["node"]["name"], "node-a");
    assert_eq!(s["transport"]["active"], "redis");
    assert_eq!(s["worker"]["consuming"], true);
    assert_eq!(s["worker"]["processed"], 4);
    assert_eq!(s["worker"]["failed"], 1);
    assert_eq!(s["services"], json!([]));
    assert!(s["gpu"].is_array());
    let tags: Vec<&str> = s["capabilities"]["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"os:linux") && tags.iter().any(|t| t.starts_with("arch:")),
        "{tags:?}"
    );
    assert_eq!(
        s["capabilities"]["gpus"],
        s["gpu"].as_array().unwrap().len()
    );

    // docs/wire-format.md#heartbeat on Redis: the stream entry and the publication.
    let msg = tokio::time::timeout(Duration::from_secs(10), pubsub.on_message().next())
        .await
        .expect("a heartbeat on node:status:node-a")
        .unwrap();
    let published: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
    assert_eq!(published["nodeId"], "node-a");
    let entries = harness::range(&mut c, "node:status:stream").await;
    assert!(!entries.is_empty());
    let (_, fields) = entries.last().unwrap();
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["nodeId", "timestamp", "payload"]);
    assert_eq!(harness::field(fields, "nodeId"), Some("node-a"));
    let ts = harness::field(fields, "timestamp").unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{ts}");
    let payload: Value = serde_json::from_str(harness::field(fields, "payload").unwrap()).unwrap();
    for key in [
        "version",
        "timestamp",
        "nodeId",
        "node",
        "system",
        "gpu",
        "services",
        "capabilities",
        "worker",
        "transport",
    ] {
        assert!(
            payload.get(key).is_some(),
            "{key} missing from the heartbeat"
        );
    }
    assert_eq!(payload["timestamp"], ts);

    // `citadel status` reads the same server.
    let out = citadel_status(&data, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("redis") && text.contains("consuming: yes"),
        "{text}"
    );
    let out = citadel_status(&data, &["--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["nodeId"], "node-a");

    // Redis goes away: not ready, with the reason.
    server.stop();
    worker::eventually(Duration::from_secs(20), "/readyz answers 503", || {
        let url = format!("{base}/readyz");
        async move { get(&url).await.0 == 503 }
    })
    .await;
    let (_, why) = get(&format!("{base}/readyz")).await;
    assert!(why.contains("redis"), "{why}");
    server.restart().await;

    // A stopped worker removes its address; `citadel status` says no worker runs.
    worker.signal(rustix::process::Signal::TERM);
    let mut worker = worker;
    assert!(
        worker.wait_exit(Duration::from_secs(30)).success(),
        "{}",
        worker.logs()
    );
    assert!(!addr_file.exists());
    let out = citadel_status(&data, &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no citadel worker is running"));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nexus_heartbeat_reaches_the_control_planes_node_list() {
    let dir = tempfile::tempdir().unwrap();
    let plane = citadel_nexus::start(
        dir.path(),
        citadel_nexus::Listen::Exact("127.0.0.1:0".parse().unwrap()),
    )
    .await
    .unwrap();
    let mut cfg = NexusConfig::new(plane.url.clone(), "worker-7");
    cfg.token = Some(plane.token.clone());
    cfg.node_name = "gpu-box".into();
    let source = NexusSource::connect(cfg).await.unwrap();
    let status =
        json!({"version": "1.0", "nodeId": "worker-7", "capabilities": {"tags": ["os:linux"]}});
    source.heartbeat(&status).await.unwrap();
    let http = citadel::handlers::http_client(Duration::from_secs(2)).unwrap();
    let node: Value = http
        .get(format!("{}/api/v1/nodes/worker-7", plane.url))
        .bearer_auth(&plane.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(node["name"], "gpu-box");
    assert_eq!(node["report"], status);
    drop(source);
    plane.stop().await.unwrap();
}
