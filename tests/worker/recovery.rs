//! Crashes, restarts and shutdown: leases, reclaiming, own-pending recovery, effectively-once,
//! graceful drain, one worker per data directory, Redis going away.

use std::time::{Duration, Instant};

use citadel_harness::redis::{self as harness, Server};
use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};
use serde_json::json;

use crate::support::worker::*;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_second_worker_takes_over_a_dead_workers_job_after_the_lease() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut a = Worker::start(&server, da.path(), &[]);
    submit(&mut c, "orphan", "sleep", json!({"ms": 1000})).await;
    wait_for(&mut c, "orphan", "start", WAIT).await;
    a.kill9();
    let killed = Instant::now();
    let b = Worker::start(&server, db.path(), &["--node-name", "node-b"]);
    let evs = wait_for(&mut c, "orphan", "end", WAIT).await;
    let recovered = killed.elapsed();
    assert_eq!(types(&evs), ["claimed", "start", "claimed", "start", "end"]);
    assert_eq!(evs[4]["data"]["meta"]["node_name"], "node-b");
    assert!(
        recovered >= Duration::from_millis(1400),
        "taken before the lease ran out: {recovered:?}"
    );
    assert_eq!(
        b.journal("orphan")["state"]["attempts"],
        2,
        "the broker's count makes it attempt 2"
    );
    eprintln!("redelivered {recovered:?} after SIGKILL (lease 1.5 s)");
}

#[tokio::test]
async fn a_job_longer_than_the_lease_is_never_taken_from_a_live_worker() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Worker::start(&server, da.path(), &[]);
    submit(&mut c, "long", "sleep", json!({"ms": 5000})).await;
    wait_for(&mut c, "long", "start", WAIT).await;
    let b = Worker::start(&server, db.path(), &["--node-name", "node-b"]);
    let evs = wait_for(&mut c, "long", "end", WAIT).await;
    assert_eq!(
        types(&evs),
        ["claimed", "start", "end"],
        "the job ran once, on one worker"
    );
    assert_eq!(evs[2]["data"]["meta"]["node_name"], "node-a");
    assert_eq!(
        a.journal_events("long"),
        ["received", "started", "succeeded", "acked"]
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["journal", "--data-dir"])
        .arg(&b.data)
        .args(["show", "long"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "worker b never saw the job");
}

#[tokio::test]
async fn a_restarted_worker_recovers_its_own_pending_job_first() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = Worker::start(&server, dir.path(), &[]);
    submit(&mut c, "mine", "sleep", json!({"ms": 2000})).await;
    wait_for(&mut c, "mine", "start", WAIT).await;
    // `started` is durable within one flush of the journal (about a millisecond).
    tokio::time::sleep(Duration::from_millis(100)).await;
    w.kill9();
    let restarted = Instant::now();
    let w = Worker::start(&server, dir.path(), &["--lease", "60s"]);
    let evs = wait_for(&mut c, "mine", "end", WAIT).await;
    assert_eq!(types(&evs), ["claimed", "start", "claimed", "start", "end"]);
    // With a 60 s lease, only reading its own pending entries explains a quick recovery.
    assert!(
        restarted.elapsed() < Duration::from_secs(15),
        "{:?}",
        restarted.elapsed()
    );
    assert_eq!(
        w.journal_events("mine"),
        [
            "received",
            "started",
            "interrupted",
            "received",
            "started",
            "succeeded",
            "acked"
        ]
    );
    assert!(
        w.logs().contains("recovered own pending entry"),
        "{}",
        w.logs()
    );
}

#[tokio::test]
async fn a_job_journaled_as_succeeded_is_acked_again_without_running() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    // The worker crashed after journaling success and before the ack.
    {
        let (journal, _) =
            Journal::open(dir.path().join("journal"), JournalOptions::default()).unwrap();
        let id = JobId::new("done").unwrap();
        let job = Job::first_delivery(id.clone(), "fail", json!({}), "redis:jobs:v1:gpu-general");
        for e in [
            EventKind::Received { job },
            EventKind::Started { attempt: 1 },
            EventKind::Succeeded {
                result: json!({"answer": 42}),
            },
        ] {
            journal
                .append(NewEvent::new(id.clone(), "redis", e))
                .await
                .unwrap();
        }
    }
    submit(&mut c, "done", "fail", json!({})).await;
    let w = Worker::start(&server, dir.path(), &[]);
    let evs = wait_for(&mut c, "done", "end", WAIT).await;
    assert_eq!(
        types(&evs),
        ["end"],
        "no claimed/start: it did not run again"
    );
    assert_eq!(evs[0]["data"]["result"], json!({"answer": 42}));
    eventually(WAIT, "acked", || {
        let mut c = c.clone();
        async move { harness::pending(&mut c).await.is_empty() }
    })
    .await;
    assert_eq!(
        w.journal_events("done"),
        ["received", "started", "succeeded", "received", "acked"]
    );
}

#[tokio::test]
async fn sigterm_drains_finishes_short_jobs_and_releases_long_ones() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let mut w = Worker::start(
        &server,
        dir.path(),
        &["--concurrency", "2", "--drain-timeout", "1s"],
    );
    submit(&mut c, "short", "sleep", json!({"ms": 400})).await;
    submit(&mut c, "long", "sleep", json!({"ms": 60_000})).await;
    wait_for(&mut c, "short", "start", WAIT).await;
    wait_for(&mut c, "long", "start", WAIT).await;
    submit(&mut c, "queued", "noop", json!({})).await;
    let asked = Instant::now();
    w.signal(rustix::process::Signal::TERM);
    let status = w.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}\n{}", w.logs());
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(8), "drain took {took:?}");
    assert_eq!(
        types(&events(&mut c, "short").await),
        ["claimed", "start", "end"]
    );
    assert_eq!(
        types(&events(&mut c, "long").await),
        ["claimed", "start"],
        "no terminal event: it will run again"
    );
    assert!(
        events(&mut c, "queued").await.is_empty(),
        "nothing new starts while draining"
    );
    assert_eq!(
        w.journal_events("short"),
        ["received", "started", "succeeded", "acked"]
    );
    assert_eq!(
        w.journal_events("long"),
        ["received", "started", "interrupted", "released"]
    );

    // Another worker picks the released job up at once and the queued one too.
    let other = tempfile::tempdir().unwrap();
    let _b = Worker::start(
        &server,
        other.path(),
        &[
            "--node-name",
            "node-b",
            "--lease",
            "60s",
            "--concurrency",
            "2",
        ],
    );
    wait_for(&mut c, "queued", "end", WAIT).await;
    eventually(WAIT, "the released job is claimed again", || {
        let mut c = c.clone();
        async move {
            events(&mut c, "long")
                .await
                .iter()
                .filter(|e| e["type"] == "claimed")
                .count()
                == 2
        }
    })
    .await;
}

#[tokio::test]
async fn a_second_worker_on_the_same_data_directory_refuses_to_start() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let _first = Worker::start(&server, dir.path(), &[]);
    submit(&mut c, "probe", "noop", json!({})).await;
    wait_for(&mut c, "probe", "end", WAIT).await;
    let mut second = Worker::start(&server, dir.path(), &[]);
    let status = second.wait_exit(Duration::from_secs(10));
    assert!(!status.success());
    assert!(
        second
            .logs()
            .contains("another citadel worker is already running"),
        "{}",
        second.logs()
    );
}

#[tokio::test]
async fn the_worker_rides_out_a_redis_restart() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let w = Worker::start(&server, dir.path(), &[]);
    submit(&mut c, "before", "noop", json!({})).await;
    wait_for(&mut c, "before", "end", WAIT).await;
    // What a restart without persistence does to a worker, without giving the port away for
    // another test's server to take: every connection is cut and the stream and group are gone.
    let _: () = redis::cmd("FLUSHALL").query_async(&mut c).await.unwrap();
    let _: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut c)
        .await
        .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut c = server.conn().await;
    submit(&mut c, "after", "noop", json!({})).await;
    let done = tokio::time::timeout(WAIT, wait_for(&mut c, "after", "end", WAIT * 2)).await;
    assert!(
        done.is_ok(),
        "the job after the restart never ran; worker log:\n{}",
        w.logs()
    );
    assert!(w.logs().contains("redis"), "{}", w.logs());
}

#[tokio::test]
async fn the_worker_applies_journal_retention_and_keeps_unsettled_jobs() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    {
        let (journal, _) =
            Journal::open(dir.path().join("journal"), JournalOptions::default()).unwrap();
        for (id, settle) in [("old-done", true), ("still-owed", false)] {
            let job_id = JobId::new(id).unwrap();
            let job = Job::first_delivery(
                job_id.clone(),
                "noop",
                json!({}),
                "redis:jobs:v1:gpu-general",
            );
            let mut events = vec![EventKind::Received { job }];
            if settle {
                events.extend([
                    EventKind::Started { attempt: 1 },
                    EventKind::Succeeded { result: json!({}) },
                    EventKind::Acked,
                ]);
            }
            for e in events {
                journal
                    .append(NewEvent::new(job_id.clone(), "redis", e))
                    .await
                    .unwrap();
            }
        }
    }
    let w = Worker::start(&server, dir.path(), &["--journal-retention", "0s"]);
    submit(&mut c, "probe", "noop", json!({})).await;
    wait_for(&mut c, "probe", "end", WAIT).await;
    let ls = std::process::Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["journal", "--data-dir"])
        .arg(&w.data)
        .args(["ls", "--json"])
        .output()
        .unwrap();
    let jobs: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let ids: Vec<&str> = jobs
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&"old-done"),
        "the settled job was compacted away: {ids:?}"
    );
    assert!(
        ids.contains(&"still-owed"),
        "a job still owed a settlement is kept: {ids:?}"
    );
}
