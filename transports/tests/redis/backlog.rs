//! While a backlog waits, the fetcher claims with one script call that reads and gates at once
//! (a round trip a claim instead of two), and that call decides every entry as the gate does on
//! its own: a completed job is acked and not run, a copy another node runs stays pending, a
//! cancellation is read with the claim, a malformed entry is handed out to be dead-lettered.
//! Once the backlog is drained the fetcher waits in the blocking read again. A group lost under
//! the script (`NOGROUP` inside it) is created again from the stream's start, and every entry
//! still in the stream is handed out once more, each once.

use std::time::Duration;

use citadel_transports::{Incoming, JobSource, RedisSource};
use redis::aio::MultiplexedConnection;

use super::{calls, commandstat, commandstats, one};
use citadel_harness::redis::*;

/// The calls of `commands` Redis has run so far (scripts' included), in order; an `EVALSHA`
/// answered `NOSCRIPT` (the script's first use: the client loads it and calls again) left out.
async fn counts(c: &mut MultiplexedConnection, commands: &[&str]) -> Vec<u64> {
    let info = commandstats(c).await;
    commands
        .iter()
        .map(|command| {
            commandstat(&info, command, "calls") - commandstat(&info, command, "failed_calls")
        })
        .collect()
}

async fn set(c: &mut MultiplexedConnection, key: &str, value: &str) {
    let _: () = redis::cmd("SET")
        .arg(key)
        .arg(value)
        .query_async(c)
        .await
        .unwrap();
}

const COMMANDS: [&str; 3] = ["xreadgroup", "evalsha", "xrevrange"];

/// A source with jobs b0..b5 waiting, of which it claimed b0 with the blocking read and the gate:
/// that read got all it asked for, so the next claim is the read-and-gate script's.
async fn backlog_of_six(server: &Server) -> (RedisSource, MultiplexedConnection) {
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    for i in 0..6 {
        enqueue_job(&mut c, &format!("b{i}"), "noop").await;
    }
    assert_eq!(job(&one(&src).await).id.as_str(), "b0");
    (src, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_is_claimed_one_script_call_a_job_and_then_the_fetcher_waits() {
    let server = Server::start().await;
    let (src, mut c) = backlog_of_six(&server).await;
    let before = counts(&mut c, &COMMANDS).await;
    for i in 1..6 {
        let got = one(&src).await;
        assert_eq!(job(&got).id.as_str(), format!("b{i}"), "in order");
        assert_eq!(got.attempt(), 1);
    }
    let after = counts(&mut c, &COMMANDS).await;
    let delta: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    // Five jobs, five script calls; each ran one XREADGROUP (no other was sent) and looked
    // at the stream's last entry.
    assert_eq!(delta, vec![5, 5, 5], "xreadgroup, evalsha, xrevrange");
    assert_eq!(
        pending(&mut c).await.len(),
        6,
        "all six claimed, none acked"
    );

    // Drained: the last call saw nothing after its entry, so the next waits in the blocking
    // read and sends no script.
    assert!(next_within(&src, 1, Duration::from_millis(400))
        .await
        .is_empty());
    let idle = counts(&mut c, &COMMANDS).await;
    assert_eq!(idle[1], after[1], "no script call while idle");
    assert!(idle[0] > after[0], "it waits in the blocking read");
    enqueue_job(&mut c, "late", "noop").await;
    assert_eq!(job(&one(&src).await).id.as_str(), "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_read_and_gate_call_decides_each_entry_as_the_gate_does() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    // Nothing comes back while the test looks.
    cfg.lease = Duration::from_secs(60);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    for i in 0..4 {
        enqueue_job(&mut c, &format!("first{i}"), "noop").await;
    }
    let recorded = r#"{"type":"end","jobId":"done","result":{"kept":true}}"#;
    let _: () = redis::cmd("HSET")
        .arg("job:done:done")
        .arg("event")
        .arg(recorded)
        .query_async(&mut c)
        .await
        .unwrap();
    set(&mut c, "job:held:owner", "node-b|jobs:v1:gpu-general|1-1").await;
    set(&mut c, "job:cancelled:cancel-me", "1").await;
    enqueue_job(&mut c, "done", "noop").await;
    let held_id = enqueue_job(&mut c, "held", "noop").await;
    enqueue_job(&mut c, "cancel-me", "noop").await;
    enqueue(&mut c, &[("type", "noop"), ("payload", "{}")]).await;
    enqueue(&mut c, &[("jobId", "bad\u{1}id"), ("type", "noop")]).await;
    let too_long = "x".repeat(257);
    enqueue(&mut c, &[("jobId", too_long.as_str()), ("type", "noop")]).await;
    enqueue(
        &mut c,
        &[
            ("jobId", "bad-payload"),
            ("type", "noop"),
            ("payload", "[1]"),
        ],
    )
    .await;
    enqueue_job(&mut c, "fresh", "noop").await;

    // Four asked, four got by the blocking read: the rest is claimed by the script.
    assert_eq!(next_within(&src, 4, Duration::from_secs(5)).await.len(), 4);
    let scripts = calls(&mut c, "xrevrange").await;
    let mut got = Vec::new();
    for _ in 0..10 {
        got.extend(next_within(&src, 4, Duration::from_millis(300)).await);
        if got.len() >= 6 {
            break;
        }
    }
    assert!(
        calls(&mut c, "xrevrange").await > scripts,
        "read and gated at once"
    );

    let ids: Vec<String> = got
        .iter()
        .map(|i| match i {
            Incoming::Job(d) => d.job.id.to_string(),
            Incoming::Malformed(m) => {
                format!("malformed:{:?}", m.job_id.as_ref().map(|j| j.to_string()))
            }
        })
        .collect();
    assert_eq!(
        ids,
        vec![
            "cancel-me",
            "malformed:None",
            "malformed:None",
            "malformed:None",
            "malformed:Some(\"bad-payload\")",
            "fresh"
        ],
        "the completed job and the held copy are not handed out"
    );
    // Asked at once (the gate's answer stands for a moment after the claim).
    let exists = calls(&mut c, "exists").await;
    assert!(src.is_cancelled(&job(&got[0]).id).await.unwrap());
    assert!(!src.is_cancelled(&job(&got[5]).id).await.unwrap());
    assert_eq!(calls(&mut c, "exists").await, exists, "the gate's answers");
    assert!(next_within(&src, 4, Duration::from_millis(300))
        .await
        .is_empty());

    let pending = pending(&mut c).await;
    let held = pending.iter().find(|(id, _, _)| *id == held_id);
    assert_eq!(
        held.map(|(_, who, n)| (who.as_str(), *n)),
        Some(("node-a", 0)),
        "the held copy stays pending, its delivery not counted"
    );
    assert_eq!(pending.len(), 4 + 7, "all but the completed job's entry");
    let ends = range(&mut c, "stream:v1:done:events").await;
    assert_eq!(ends.len(), 1);
    assert_eq!(field(&ends[0].1, "event"), Some(recorded), "re-published");
    let marker: String = redis::cmd("GET")
        .arg("job:fresh:owner")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(
        marker.starts_with("node-a|jobs:v1:gpu-general|"),
        "{marker}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_lost_while_a_backlog_waits_is_created_again_and_the_backlog_runs() {
    let server = Server::start().await;
    let (src, mut c) = backlog_of_six(&server).await;
    let failed = |info: &str| commandstat(info, "evalsha", "failed_calls");
    let failed_before = failed(&commandstats(&mut c).await);
    destroy_group(&mut c).await;
    // The group is made again from the stream's start: b0's claim went with the old one.
    let until = std::time::Instant::now() + Duration::from_secs(15);
    let mut ids = Vec::new();
    while ids.len() < 6 && std::time::Instant::now() < until {
        for item in src.next(1).await.unwrap_or_default() {
            ids.push(job(&item).id.to_string());
        }
    }
    assert!(
        failed(&commandstats(&mut c).await) > failed_before,
        "the script met the missing group"
    );
    ids.sort();
    assert_eq!(ids, ["b0", "b1", "b2", "b3", "b4", "b5"], "each once");
}
