//! Routing on Redis with two workers of different capabilities (tags set through their
//! manifests): a job sent to a tag stream runs only on the node with the tag; a job sent to one
//! node runs only there, ahead of a backlog on the base stream; `routing.base: auto` without a
//! GPU reads `cpu-general` and never `gpu-general`; a stand-in engine that starts serving a model
//! makes the node read `engine:…`/`model:…` within one probe interval, and stopping it makes the
//! node let go while the job it claimed still finishes.

use std::time::Duration;

use citadel_harness::engine::{EngineScript, FakeEngine};
use citadel_harness::redis::Server;
use serde_json::json;

use super::support::{
    assert_ran_only, enqueue_on, has_gpu, metrics_of, started, streams_of, worker,
};
use crate::support::worker::{eventually, status, wait_for};

const WAIT: Duration = Duration::from_secs(20);

fn tags(list: &[&str]) -> String {
    format!("node:\n  tags: [{}]\n", list.join(", "))
}

#[tokio::test]
async fn a_job_sent_to_a_tag_runs_only_on_the_node_with_that_tag() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(&server, da.path(), "node-a", &tags(&["lab-a"]), &[]);
    let b = worker(&server, db.path(), "node-b", &tags(&["lab-b"]), &[]);
    for i in 0..6 {
        let (stream, id) = match i % 2 {
            0 => ("jobs:v1:tag:lab-a", format!("for-a-{i}")),
            _ => ("jobs:v1:tag:lab-b", format!("for-b-{i}")),
        };
        enqueue_on(&c, stream, &id, "echo", json!({"i": i})).await;
    }
    for i in 0..6 {
        let id = format!("for-{}-{i}", if i % 2 == 0 { "a" } else { "b" });
        wait_for(&mut c, &id, "end", WAIT).await;
    }
    assert_ran_only(&a, "node-a", 3, "for-a-");
    assert_ran_only(&b, "node-b", 3, "for-b-");
}

#[tokio::test]
async fn a_job_for_one_node_runs_only_there_ahead_of_the_base_backlog() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    for i in 0..8 {
        let id = format!("base-{i}");
        enqueue_on(
            &c,
            "jobs:v1:gpu-general",
            &id,
            "sleep",
            json!({"ms": "100"}),
        )
        .await;
    }
    enqueue_on(&c, "jobs:v1:node:node-b", "for-b", "echo", json!({})).await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(&server, da.path(), "node-a", "", &[]);
    let b = worker(&server, db.path(), "node-b", "", &[]);
    wait_for(&mut c, "for-b", "end", WAIT).await;
    for i in 0..8 {
        wait_for(&mut c, &format!("base-{i}"), "end", WAIT).await;
    }
    let (on_a, on_b) = (started(&a), started(&b));
    assert!(!on_a.contains(&"for-b".to_string()), "node-a ran {on_a:?}");
    assert_eq!(
        on_b.first().map(String::as_str),
        Some("for-b"),
        "node-b's own job comes before the base backlog: {on_b:?}"
    );
}

#[tokio::test]
async fn auto_without_a_gpu_reads_cpu_general_and_never_gpu_general() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let gpu = has_gpu();
    let (mine, other) = match gpu {
        false => ("jobs:v1:cpu-general", "jobs:v1:gpu-general"),
        true => ("jobs:v1:gpu-general", "jobs:v1:cpu-general"),
    };
    enqueue_on(&c, other, "not-mine", "echo", json!({})).await;
    enqueue_on(&c, mine, "mine", "echo", json!({})).await;
    let d = tempfile::tempdir().unwrap();
    let w = worker(&server, d.path(), "node-a", "routing:\n  base: auto\n", &[]);
    wait_for(&mut c, "mine", "end", WAIT).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(started(&w), ["mine"], "gpu detected: {gpu}");
    assert!(status(&mut c, "not-mine").await.is_empty());
}

#[tokio::test]
async fn an_engine_that_starts_serving_a_model_brings_its_streams_and_stopping_lets_go() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let engine = FakeEngine::start(EngineScript {
        loading: true,
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let spec = format!("vllm={}", engine.url());
    let d = tempfile::tempdir().unwrap();
    let w = worker(
        &server,
        d.path(),
        "node-a",
        "",
        &["--engine", &spec, "--routing-probe-interval", "300ms"],
    );
    enqueue_on(
        &c,
        "jobs:v1:tag:model:tiny",
        "m1",
        "sleep",
        json!({"ms": "1500"}),
    )
    .await;
    enqueue_on(&c, "jobs:v1:tag:engine:vllm", "e1", "echo", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(
        started(&w).is_empty(),
        "nothing runs while the engine loads"
    );

    engine.script(|s| s.loading = false);
    wait_for(&mut c, "e1", "end", WAIT).await;
    wait_for(&mut c, "m1", "start", WAIT).await;
    let serving = streams_of(&w);
    assert!(
        serving.contains(&"jobs:v1:tag:model:tiny".to_string())
            && serving.contains(&"jobs:v1:tag:engine:vllm".to_string()),
        "citadel status shows the engine's streams: {serving:?}"
    );
    let metrics = metrics_of(&w).await;
    assert!(
        metrics
            .contains(r#"citadel_routing_stream{stream="jobs:v1:tag:model:tiny",priority="1"} 1"#),
        "{metrics}"
    );
    engine.script(|s| s.loading = true);
    // The job claimed before the engine stopped still finishes where it is.
    wait_for(&mut c, "m1", "end", WAIT).await;
    eventually(WAIT, "the node lets go of the engine's streams", || {
        let logs = w.logs();
        async move { logs.matches("the job streams changed").count() >= 2 }
    })
    .await;
    assert!(!streams_of(&w).iter().any(|s| s.contains("model:tiny")));
    enqueue_on(&c, "jobs:v1:tag:model:tiny", "m2", "echo", json!({})).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !started(&w).contains(&"m2".to_string()),
        "a node whose engine stopped takes no job of its model"
    );
    let ran = started(&w);
    assert!(
        ran.contains(&"e1".to_string()) && ran.contains(&"m1".to_string()),
        "{ran:?}"
    );
}
