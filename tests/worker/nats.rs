//! `citadel work --transport nats` end to end: the real binary and runner against a real
//! `nats-server -js`, a producer that publishes job messages and reads the events stream, the
//! dead letters, the statuses and the work queue.

use std::time::{Duration, Instant};

use citadel_harness::nats::{types, Server, SUBJECT};
use citadel_transports::nats::NatsProducer;
use citadel_transports::JobId;
use serde_json::{json, Value};

use crate::support::worker::Worker;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until the job's events (from the EVENTS stream) include `ty`; returns them all.
async fn wait_for(p: &NatsProducer, id: &str, ty: &str) -> Vec<Value> {
    let job = JobId::new(id).unwrap();
    let started = Instant::now();
    loop {
        let evs = p.events(&job).await.unwrap_or_default();
        if evs.iter().any(|e| e["type"] == ty) {
            return evs;
        }
        assert!(
            started.elapsed() < WAIT,
            "no `{ty}` event for {id}; got {:?}",
            types(&evs)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn submit(p: &NatsProducer, id: &str, ty: &str, payload: Value) {
    p.enqueue(
        SUBJECT,
        &json!({"jobId": id, "type": ty, "payload": payload}),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_worker_runs_retries_dead_letters_and_cancels_jobs() {
    let server = Server::start();
    let url = server.url();
    let dir = tempfile::tempdir().unwrap();
    let worker = Worker::start_on(
        &["--transport", "nats", "--nats-url", &url],
        dir.path(),
        &["--lease", "2s", "--concurrency", "4"],
    );
    // The worker creates the stream: wait until a producer can publish.
    let p = server.producer().await;
    let started = Instant::now();
    while p.jetstream().get_stream("JOBS").await.is_err() {
        assert!(
            started.elapsed() < WAIT,
            "no JOBS stream\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Success: the events of docs/wire-format.md#job-events, in order, the status, the message gone from the queue.
    submit(&p, "ok-1", "echo", json!({"text": "hi"})).await;
    let evs = wait_for(&p, "ok-1", "end").await;
    assert_eq!(types(&evs), ["claimed", "start", "end"]);
    assert_eq!(evs[2]["data"]["result"], json!({"text": "hi"}));
    assert_eq!(evs[0]["data"]["meta"]["node_name"], "node-a");
    let status = p
        .status(&JobId::new("ok-1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status["status"], "completed");

    // A failing job is retried (the delivery count is the attempt) and dead-lettered at the end.
    submit(&p, "poison", "fail", json!({"maxAttempts": 2})).await;
    let started = Instant::now();
    let dead = loop {
        let dead = p.dead_letters(SUBJECT).await.unwrap();
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            started.elapsed() < WAIT * 2,
            "not dead-lettered\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(dead[0]["jobId"], "poison");
    assert_eq!(dead[0]["attempts"], 2);
    assert_eq!(dead[0]["errors"].as_array().unwrap().len(), 2);
    assert!(!dead[0]["reason"].as_str().unwrap().is_empty());
    let evs = p.events(&JobId::new("poison").unwrap()).await.unwrap();
    assert_eq!(
        types(&evs),
        ["claimed", "start", "error", "claimed", "start", "error"]
    );

    // Cancelled before it starts: `claimed, cancelled`, never started.
    p.cancel(&JobId::new("early").unwrap()).await.unwrap();
    submit(&p, "early", "sleep", json!({"ms": 30000})).await;
    let evs = wait_for(&p, "early", "cancelled").await;
    assert_eq!(types(&evs), ["claimed", "cancelled"]);

    // Cancelled while running: the handler stops within a couple of seconds.
    submit(&p, "mid", "sleep", json!({"ms": 60000})).await;
    wait_for(&p, "mid", "start").await;
    let asked = Instant::now();
    p.cancel(&JobId::new("mid").unwrap()).await.unwrap();
    let evs = wait_for(&p, "mid", "cancelled").await;
    assert!(asked.elapsed() < Duration::from_secs(5));
    assert_eq!(types(&evs), ["claimed", "start", "cancelled"]);

    // Everything settled: the work queue is empty.
    let started = Instant::now();
    loop {
        let mut s = p.jetstream().get_stream("JOBS").await.unwrap();
        if s.info().await.unwrap().state.messages == 0 {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "jobs left in the queue\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let journal = worker.journal_events("ok-1");
    assert!(journal.iter().any(|e| e == "succeeded"), "{journal:?}");
}
