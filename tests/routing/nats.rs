//! Routing on NATS with two workers of different capabilities (tags set through their
//! manifests), as on Redis: a job sent to a tag subject runs only on the node with the tag; a job
//! sent to one node runs only there, ahead of a backlog on the base subject; `/metrics` counts
//! the claims per subject; an engine that becomes ready brings its subjects without a restart.

use std::time::{Duration, Instant};

use citadel_harness::engine::{EngineScript, FakeEngine};
use citadel_harness::nats::{types, Server};
use citadel_transports::nats::NatsProducer;
use citadel_transports::JobId;
use serde_json::{json, Value};

use super::support::{assert_ran_only, metrics_of, started};
use crate::support::worker::Worker;

const WAIT: Duration = Duration::from_secs(20);

fn worker(server: &Server, data: &std::path::Path, node: &str, manifest: &str) -> Worker {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("citadel.yaml"), manifest).unwrap();
    Worker::start_on(
        &["--transport", "nats", "--nats-url", &server.url()],
        data,
        &["--node-name", node],
    )
}

fn tags(list: &[&str]) -> String {
    format!("node:\n  tags: [{}]\n", list.join(", "))
}

/// The job stream and base consumer as a worker creates them (by a source that never pulls),
/// so jobs can wait before any worker runs.
async fn jobs_stream(server: &Server) {
    drop(server.source("setup").await);
}

async fn submit(p: &NatsProducer, subject: &str, id: &str, ty: &str, payload: Value) {
    p.enqueue(
        subject,
        &json!({"jobId": id, "type": ty, "payload": payload}),
    )
    .await
    .unwrap();
}

async fn wait_end(p: &NatsProducer, id: &str, workers: &[&Worker]) {
    let job = JobId::new(id).unwrap();
    let since = Instant::now();
    loop {
        let evs = p.events(&job).await.unwrap_or_default();
        if evs.iter().any(|e| e["type"] == "end") {
            return;
        }
        let logs: Vec<String> = workers.iter().map(|w| w.logs()).collect();
        assert!(
            since.elapsed() < WAIT,
            "no `end` for {id}; got {:?}\n{}",
            types(&evs),
            logs.join("\n----\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_sent_to_a_tag_runs_only_on_the_node_with_that_tag_on_nats() {
    let server = Server::start();
    jobs_stream(&server).await;
    let p = server.producer().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(&server, da.path(), "node-a", &tags(&["lab-a"]));
    let b = worker(&server, db.path(), "node-b", &tags(&["lab-b"]));
    for i in 0..6 {
        let (subject, id) = match i % 2 {
            0 => ("jobs.v1.tag.lab-a", format!("for-a-{i}")),
            _ => ("jobs.v1.tag.lab-b", format!("for-b-{i}")),
        };
        submit(&p, subject, &id, "echo", json!({"i": i})).await;
    }
    for i in 0..6 {
        let id = format!("for-{}-{i}", if i % 2 == 0 { "a" } else { "b" });
        wait_end(&p, &id, &[&a, &b]).await;
    }
    assert_ran_only(&a, "node-a", 3, "for-a-");
    assert_ran_only(&b, "node-b", 3, "for-b-");
    let metrics = metrics_of(&a).await;
    assert!(
        metrics.contains(r#"citadel_routing_claims_total{stream="jobs.v1.tag.lab-a"} 3"#),
        "/metrics counts the claims per subject: {metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_for_one_node_runs_only_there_ahead_of_the_base_backlog_on_nats() {
    let server = Server::start();
    jobs_stream(&server).await;
    let p = server.producer().await;
    for i in 0..8 {
        let id = format!("base-{i}");
        let ms = json!({"ms": "100"});
        submit(&p, "jobs.v1.gpu-general", &id, "sleep", ms).await;
    }
    submit(&p, "jobs.v1.node.node-b", "for-b", "echo", json!({})).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(&server, da.path(), "node-a", "");
    let b = worker(&server, db.path(), "node-b", "");
    wait_end(&p, "for-b", &[&a, &b]).await;
    for i in 0..8 {
        wait_end(&p, &format!("base-{i}"), &[&a, &b]).await;
    }
    let (on_a, on_b) = (started(&a), started(&b));
    assert!(!on_a.contains(&"for-b".to_string()), "node-a ran {on_a:?}");
    assert_eq!(
        on_b.first().map(String::as_str),
        Some("for-b"),
        "node-b's own job comes before the base backlog: {on_b:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_starts_serving_brings_its_subjects_live_on_nats() {
    let server = Server::start();
    jobs_stream(&server).await;
    let p = server.producer().await;
    let engine = FakeEngine::start(EngineScript {
        loading: true,
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let spec = format!("vllm={}", engine.url());
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("citadel.yaml"), "").unwrap();
    let w = Worker::start_on(
        &["--transport", "nats", "--nats-url", &server.url()],
        d.path(),
        &["--engine", &spec, "--routing-probe-interval", "300ms"],
    );
    submit(&p, "jobs.v1.tag.engine.vllm", "e1", "echo", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        started(&w).is_empty(),
        "nothing runs while the engine loads"
    );
    engine.script(|s| s.loading = false);
    wait_end(&p, "e1", &[&w]).await;
    assert!(
        w.logs().contains("the job subjects changed"),
        "{}",
        w.logs()
    );
}
