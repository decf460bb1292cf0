//! The completion record (`job:{jobId}:done`): a job whose `end` was published is never handed
//! out again by any node of the group, whichever way its entry comes back (a lost ack, the same
//! `jobId` enqueued again, a group re-created from `0`); the delivery is acked and the result
//! re-published instead. A later `claimed` never overwrites `completed` in the status hash.

use std::time::{Duration, Instant};

use citadel_transports::{
    EventData, EventMeta, Incoming, JobId, JobSource, RedisSource, SettleContext, Settlement,
    WireEvent,
};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use citadel_harness::redis::*;

fn meta(node: &str) -> EventMeta {
    EventMeta::new(node, node)
}

async fn with_lease(server: &Server, consumer: &str, lease_ms: u64) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.lease = Duration::from_millis(lease_ms);
    RedisSource::connect(cfg).await.unwrap()
}

/// A source that keeps acked entries (`--keep-acked`): a group re-created from `0` then replays
/// the stream's history. (By default an ack deletes the entry, and there is no history.)
async fn keeping(server: &Server, consumer: &str) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.keep_acked = true;
    RedisSource::connect(cfg).await.unwrap()
}

/// Announces the job's success as the runner does: `end` (which writes the record) first.
async fn publish_end(src: &RedisSource, item: &Incoming) {
    let end = EventData::End {
        result: json!({"output": "done once"}),
    };
    let ev = WireEvent::for_job(job(item), meta(src.config().worker_id.as_str()), end);
    src.publish(&ev).await.unwrap();
}

/// The job's `end` events in its event stream.
async fn ends(c: &mut MultiplexedConnection, id: &str) -> Vec<String> {
    range(c, &format!("stream:v1:{id}:events"))
        .await
        .into_iter()
        .filter(|(_, f)| field(f, "type") == Some("end"))
        .map(|(_, f)| field(&f, "event").unwrap_or_default().to_owned())
        .collect()
}

/// `next` on `src` for `within`, collecting everything it hands out.
async fn drain_for(src: &RedisSource, within: Duration) -> Vec<Incoming> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < until {
        got.extend(src.next(4).await.unwrap());
    }
    got
}

/// Waits until the job has `n` `end` events and nothing is pending; fails after 15 s.
async fn settle_down(c: &mut MultiplexedConnection, src: &RedisSource, id: &str, n: usize) {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let handed = src.next(4).await.unwrap();
        assert!(
            handed.is_empty(),
            "a completed job was handed out: {handed:?}"
        );
        if ends(c, id).await.len() >= n && pending(c).await.is_empty() {
            return;
        }
        assert!(
            Instant::now() < until,
            "the completed job's entry was not acked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_whose_ack_was_lost_is_acked_not_run_by_another_node() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 300).await;
    let b = with_lease(&server, "node-b", 300).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "lost-ack", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    publish_end(&a, &got[0]).await;
    // A dies before its ack (or its lease ran out while it settled): B reclaims the entry.
    drop(a);
    settle_down(&mut c, &b, "lost-ack", 2).await;
    let ends = ends(&mut c, "lost-ack").await;
    assert_eq!(ends[0], ends[1], "the result is re-published as it was");
    let status: String = redis::cmd("HGET")
        .arg("job:lost-ack:status")
        .arg("status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(status, "completed");
    let ttl: i64 = redis::cmd("PTTL")
        .arg("job:lost-ack:done")
        .query_async(&mut c)
        .await
        .unwrap();
    let week = 7 * 24 * 3600 * 1000;
    assert!(
        ttl > 0 && ttl <= week,
        "expires like the status hash: {ttl}"
    );
}

/// The record written ahead of the `end` (what the runner does before it journals a success):
/// a node that dies right after it, with no `end` published and no ack, leaves the entry to
/// another node, which acks it with the recorded result instead of handing it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_recorded_before_its_end_is_acked_not_run_by_another_node() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 300).await;
    let b = with_lease(&server, "node-b", 300).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "recorded", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    let end = EventData::End {
        result: json!({"output": "done once"}),
    };
    let ev = WireEvent::for_job(job(&got[0]), meta("node-a"), end);
    a.record_success(&ev).await.unwrap();
    assert!(
        ends(&mut c, "recorded").await.is_empty(),
        "nothing published"
    );
    let status: Option<String> = redis::cmd("HGET")
        .arg("job:recorded:status")
        .arg("status")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_ne!(
        status.as_deref(),
        Some("completed"),
        "not completed before its `end`"
    );
    drop(a);
    settle_down(&mut c, &b, "recorded", 1).await;
    assert_eq!(
        ends(&mut c, "recorded").await,
        [ev.to_json()],
        "the recorded result"
    );
    let claimed = WireEvent::new(
        ev.job_id.clone(),
        meta("node-b"),
        EventData::Start {
            message: "late".into(),
        },
    );
    assert!(
        b.record_success(&claimed).await.is_err(),
        "only an `end` is a completion record"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_job_in_a_group_recreated_from_zero_is_not_run_again() {
    let server = Server::start().await;
    let a = keeping(&server, "node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "history", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    publish_end(&a, &got[0]).await;
    a.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    drop(a);
    // A mistyped or re-created group replays the stream's history (kept acked entries).
    destroy_group(&mut c).await;
    let b = keeping(&server, "node-b").await;
    settle_down(&mut c, &b, "history", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_node_notices_its_group_recreated_under_it() {
    let server = Server::start().await;
    let a = keeping(&server, "node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "seen-here", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    publish_end(&a, &got[0]).await;
    a.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    // Enqueued after `a` joined and completed by another node: fresh to `a`.
    let b = keeping(&server, "node-b").await;
    enqueue_job(&mut c, "done-elsewhere", "echo").await;
    let got = next_within(&b, 1, Duration::from_secs(5)).await;
    publish_end(&b, &got[0]).await;
    b.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    drop(b);
    // Re-created from `0` while `a` waits for no job (no read of its own fails).
    for args in [
        vec!["DESTROY", STREAM, GROUP],
        vec!["CREATE", STREAM, GROUP, "0"],
    ] {
        let _: redis::Value = redis::cmd("XGROUP")
            .arg(&args)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    settle_down(&mut c, &a, "done-elsewhere", 2).await;
    assert_eq!(ends(&mut c, "seen-here").await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_id_enqueued_again_after_completion_is_not_run_again() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "twice", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    publish_end(&a, &got[0]).await;
    a.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    // A producer that retried its XADD: the second copy reaches a node that saw the first
    // (`a`), and a node that joins later (`b`) — neither runs it.
    enqueue_job(&mut c, "twice", "echo").await;
    settle_down(&mut c, &a, "twice", 2).await;
    enqueue_job(&mut c, "twice", "echo").await;
    let b = server.source("node-b").await;
    settle_down(&mut c, &b, "twice", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_jobs_and_other_jobs_are_still_handed_out() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "done", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    publish_end(&a, &got[0]).await;
    a.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    enqueue_job(&mut c, "other", "echo").await;
    let got = drain_for(&a, Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(job(&got[0]).id.as_str(), "other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_claimed_never_overwrites_completed() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let b = server.source("node-b").await;
    let mut c = server.conn().await;
    let id = JobId::new("late-claim").unwrap();
    let end = EventData::End {
        result: json!({"ok": true}),
    };
    a.publish(&WireEvent::new(id.clone(), meta("node-a"), end))
        .await
        .unwrap();
    for data in [
        EventData::Claimed {
            agent_version: "0.1.0".into(),
        },
        EventData::Error {
            error: "ran twice".into(),
            recoverable: true,
        },
    ] {
        b.publish(&WireEvent::new(id.clone(), meta("node-b"), data))
            .await
            .unwrap();
    }
    let (status, worker): (String, String) = redis::cmd("HMGET")
        .arg("job:late-claim:status")
        .arg("status")
        .arg("worker_id")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!((status.as_str(), worker.as_str()), ("completed", "node-a"));
}

/// What recording a success ahead of the journal costs (docs/transports.md#the-redis-transport):
/// the runner waits for `record_success` before it journals the success, one more round trip
/// per succeeded job (batched with the events in flight); this prints its distribution over
/// 400 jobs, 8 settling at once, each also sending `claimed`, `start` and a chunk. Figures only,
/// no timing assertion:
/// `cargo test -p citadel-transports --test tests -- redis::completion::the_record --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_before_the_journal_is_measured() {
    let server = Server::start().await;
    let src = std::sync::Arc::new(server.source("node-a").await);
    let c = server.conn().await;
    let spans = crate::record_cost::record_successes(src, |id| {
        let mut c = c.clone();
        async move {
            let recorded: bool = redis::cmd("EXISTS")
                .arg(format!("job:{id}:done"))
                .query_async(&mut c)
                .await
                .unwrap();
            assert!(recorded, "{id}: no completion record once it returned");
        }
    })
    .await;
    crate::record_cost::report("redis", spans);
}
