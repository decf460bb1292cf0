//! The event sequence and fields of every way a job can end (docs/wire-format.md#job-events), the status hash, the
//! dead-letter entries (docs/wire-format.md#job-entries), retries and cancellation.

use std::time::Duration;

use citadel_harness::redis::{self as harness, Server};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::support::worker::*;

const WAIT: Duration = Duration::from_secs(20);

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[tokio::test]
async fn a_successful_job_publishes_exactly_the_wire_format() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("stream:v1:job-ok").await.unwrap();
    let dir = data_dir();
    let _w = Worker::start(&server, dir.path(), &[]);
    harness::enqueue(
        &mut c,
        &[
            ("jobId", "job-ok"),
            ("type", "echo"),
            ("payload", r#"{"text":"hi","n":2}"#),
            ("rayId", "ray-9"),
            ("enqueuedAt", "2026-11-22T10:00:00Z"),
        ],
    )
    .await;

    let mut messages = pubsub.on_message();
    let mut seen: Vec<Value> = Vec::new();
    while !seen.iter().any(|e| e["type"] == "end") {
        let msg = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("events arrive")
            .unwrap();
        assert_eq!(msg.get_channel_name(), "stream:v1:job-ok");
        seen.push(serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap());
    }
    assert_eq!(types(&seen), ["claimed", "start", "end"]);
    for e in &seen {
        let keys: Vec<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys.len(), 6, "{e}");
        assert_eq!(e["version"], "1.0");
        assert_eq!(e["jobId"], "job-ok");
        assert_eq!(e["rayId"], "ray-9");
        let ts = e["timestamp"].as_str().unwrap();
        assert!(
            ts.ends_with('Z') && humantime::parse_rfc3339(ts).is_ok(),
            "{ts}"
        );
        assert_eq!(
            e["data"]["meta"],
            json!({"node_id": "node-a", "node_name": "node-a"})
        );
    }
    assert_eq!(seen[0]["data"]["agent_version"], env!("CARGO_PKG_VERSION"));
    assert!(seen[1]["data"]["message"]
        .as_str()
        .unwrap()
        .contains("echo"));
    assert_eq!(seen[2]["data"]["result"], json!({"text": "hi", "n": 2}));
    // The same events, in order, in the capped stream for late readers.
    assert_eq!(
        types(&events(&mut c, "job-ok").await),
        ["claimed", "start", "end"]
    );
    let st = status(&mut c, "job-ok").await;
    assert_eq!(st["status"], "completed");
    assert!(st["worker_id"].starts_with("node-a-"));
    eventually(WAIT, "the entry is acked", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
}

#[tokio::test]
async fn failures_retry_then_succeed_or_reach_the_dead_letter_queue() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = data_dir();
    let w = Worker::start(&server, dir.path(), &["--concurrency", "4"]);
    submit(&mut c, "flaky", "fail", json!({"times": 1})).await;
    submit(&mut c, "doomed", "fail", json!({"maxAttempts": 2})).await;
    submit(&mut c, "unknown", "transmogrify", json!({})).await;
    harness::enqueue(
        &mut c,
        &[
            ("jobId", "broken"),
            ("type", "echo"),
            ("payload", "{not json"),
        ],
    )
    .await;
    submit(
        &mut c,
        "slow",
        "sleep",
        json!({"ms": 10_000, "timeout_ms": 300, "maxAttempts": "1"}),
    )
    .await;

    let flaky = wait_for(&mut c, "flaky", "end", WAIT).await;
    assert_eq!(
        types(&flaky),
        ["claimed", "start", "error", "claimed", "start", "end"]
    );
    assert_eq!(flaky[2]["data"]["recoverable"], true);
    assert!(flaky[2]["data"]["error"]
        .as_str()
        .unwrap()
        .contains("attempt 1"));
    assert_eq!(status(&mut c, "flaky").await["status"], "completed");
    assert_eq!(w.journal("flaky")["state"]["attempts"], 2);

    let doomed = wait_for(&mut c, "doomed", "claimed", WAIT).await;
    assert_eq!(doomed[0]["type"], "claimed");
    eventually(WAIT, "doomed is dead-lettered", || {
        let mut c = c.clone();
        async move {
            dead_letters(&mut c)
                .await
                .iter()
                .any(|d| d["jobId"] == "doomed")
        }
    })
    .await;
    let doomed = events(&mut c, "doomed").await;
    assert_eq!(
        types(&doomed),
        ["claimed", "start", "error", "claimed", "start", "error"]
    );
    assert_eq!(doomed[2]["data"]["recoverable"], true);
    assert_eq!(doomed[5]["data"]["recoverable"], false);
    let st = status(&mut c, "doomed").await;
    assert_eq!(st["status"], "failed");
    assert!(st["error"].contains("deliberate failure"), "{st:?}");

    let unknown = wait_for(&mut c, "unknown", "error", WAIT).await;
    assert_eq!(types(&unknown), ["error"], "an unknown type never starts");
    let msg = unknown[0]["data"]["error"].as_str().unwrap();
    assert!(
        msg.contains("transmogrify") && msg.contains("echo") && msg.contains("sleep"),
        "{msg}"
    );
    assert_eq!(unknown[0]["data"]["recoverable"], false);

    let broken = wait_for(&mut c, "broken", "error", WAIT).await;
    assert!(
        broken[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON"),
        "{broken:?}"
    );

    let slow = wait_for(&mut c, "slow", "error", WAIT).await;
    assert_eq!(types(&slow), ["claimed", "start", "error"]);
    assert!(
        slow[2]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{slow:?}"
    );
    assert_eq!(
        w.journal_events("slow"),
        ["received", "started", "timed_out", "dead_lettered"]
    );

    eventually(WAIT, "four dead letters", || {
        let mut c = c.clone();
        async move { dead_letters(&mut c).await.len() == 4 }
    })
    .await;
    let dl = dead_letters(&mut c).await;
    let doomed = dl.iter().find(|d| d["jobId"] == "doomed").unwrap();
    assert_eq!(doomed["original_queue"], "jobs:v1:gpu-general");
    assert_eq!(doomed["attempts"], "2");
    assert!(
        doomed["reason"].contains("gave up after 2 attempts"),
        "{doomed:?}"
    );
    let errors: Vec<String> = serde_json::from_str(&doomed["errors"]).unwrap();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(doomed["worker_id"].starts_with("node-a-"));
    assert!(humantime::parse_rfc3339(&doomed["moved_at"]).is_ok());
    assert_eq!(
        serde_json::from_str::<Value>(&doomed["payload"]).unwrap(),
        json!({"maxAttempts": 2})
    );
    for d in &dl {
        for field in [
            "original_message_id",
            "original_queue",
            "reason",
            "moved_at",
            "worker_id",
            "jobId",
            "payload",
            "attempts",
            "errors",
        ] {
            assert!(d.contains_key(field), "{field} missing in {d:?}");
        }
    }
    assert!(dl
        .iter()
        .any(|d| d["jobId"] == "unknown" && d["reason"].contains("unknown job type")));
    assert!(dl
        .iter()
        .any(|d| d["jobId"] == "broken" && d["reason"].starts_with("malformed")));
    eventually(WAIT, "nothing is left pending", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
}

#[tokio::test]
async fn cancellation_before_start_and_while_running() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = data_dir();
    let w = Worker::start(&server, dir.path(), &["--concurrency", "2"]);
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:early")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    submit(&mut c, "early", "sleep", json!({"ms": 5000})).await;
    let early = wait_for(&mut c, "early", "cancelled", WAIT).await;
    assert_eq!(
        types(&early),
        ["claimed", "cancelled"],
        "a cancelled job never starts"
    );
    assert_eq!(
        w.journal_events("early"),
        ["received", "cancelled", "acked"]
    );

    submit(&mut c, "late", "sleep", json!({"ms": 60_000})).await;
    wait_for(&mut c, "late", "start", WAIT).await;
    let asked = std::time::Instant::now();
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:late")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let late = wait_for(&mut c, "late", "cancelled", WAIT).await;
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "cancellation took {:?}",
        asked.elapsed()
    );
    assert_eq!(types(&late), ["claimed", "start", "cancelled"]);
    assert_eq!(status(&mut c, "late").await["status"], "cancelled");
    assert_eq!(
        w.journal_events("late"),
        ["received", "started", "cancelled", "acked"]
    );
    eventually(WAIT, "both are acked", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
    assert!(dead_letters(&mut c).await.is_empty());
}

#[tokio::test]
async fn jobs_for_other_nodes_are_skipped_and_shell_is_off_by_default() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = data_dir();
    let w = Worker::start(&server, dir.path(), &[]);
    submit(
        &mut c,
        "elsewhere",
        "echo",
        json!({"target_node": "node-b"}),
    )
    .await;
    submit(&mut c, "here", "echo", json!({"target_node": "node-a"})).await;
    submit(
        &mut c,
        "shell",
        "SHELL_COMMAND",
        json!({"command": "touch /tmp/should-not-exist"}),
    )
    .await;
    wait_for(&mut c, "here", "end", WAIT).await;
    let shell = wait_for(&mut c, "shell", "error", WAIT).await;
    assert!(
        shell[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("unknown job type `SHELL_COMMAND`"),
        "{shell:?}"
    );
    eventually(WAIT, "all settled", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
    assert!(
        events(&mut c, "elsewhere").await.is_empty(),
        "a skipped job publishes nothing"
    );
    assert_eq!(w.journal_events("elsewhere"), ["received", "skipped"]);
}

#[tokio::test]
async fn shell_commands_run_when_enabled_and_stream_their_output() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = data_dir();
    let _w = Worker::start(&server, dir.path(), &["--enable-shell"]);
    submit(
        &mut c,
        "sh",
        "shell_command",
        json!({"command": "echo one; echo two"}),
    )
    .await;
    let evs = wait_for(&mut c, "sh", "end", WAIT).await;
    assert_eq!(types(&evs), ["claimed", "start", "chunk", "chunk", "end"]);
    assert_eq!(
        evs[2]["data"],
        json!({"content": "one\n", "index": 0, "meta": {"node_id": "node-a", "node_name": "node-a"}})
    );
    assert_eq!(evs[3]["data"]["index"], 1);
    assert_eq!(evs[4]["data"]["result"]["output"], "one\ntwo\n");
}
