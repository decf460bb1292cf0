//! Nothing grows without bound: an acked or dead-lettered entry leaves its job stream (or, with
//! `keep_acked`, is trimmed once no consumer group needs it), the dead-letter stream keeps its
//! newest entries up to its cap and counts what it drops, and a finished job's event stream
//! expires after the short grace.

use std::time::Duration;

use citadel_transports::redis::RedisProducer;
use citadel_transports::{
    dead_letters, EventData, EventMeta, Incoming, JobEntry, JobId, JobSource, RedisSource,
    SettleContext, Settlement, WireEvent,
};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use citadel_harness::redis::*;

async fn xlen(c: &mut MultiplexedConnection, key: &str) -> usize {
    redis::cmd("XLEN").arg(key).query_async(c).await.unwrap()
}

/// Takes `n` deliveries from `src` and settles each with `s`.
async fn drain(src: &RedisSource, n: usize, s: &Settlement) -> Vec<Incoming> {
    let mut got = Vec::new();
    while got.len() < n {
        let batch = next_within(src, n - got.len(), Duration::from_secs(5)).await;
        assert!(!batch.is_empty(), "only {} of {n} delivered", got.len());
        got.extend(batch);
    }
    for inc in &got {
        src.settle(inc.receipt(), s, &SettleContext::default())
            .await
            .unwrap();
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_stream_is_empty() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    for i in 0..5 {
        enqueue_job(&mut c, &format!("j{i}"), "noop").await;
    }
    drain(&src, 4, &Settlement::Ack).await;
    let dead = Settlement::DeadLetter {
        reason: "bad".into(),
    };
    drain(&src, 1, &dead).await;
    assert!(pending(&mut c).await.is_empty());
    assert_eq!(
        xlen(&mut c, STREAM).await,
        0,
        "acked entries left the stream"
    );
    assert_eq!(xlen(&mut c, "dlq:v1:gpu-general").await, 1);
}

/// A second group that has not read yet: `--keep-acked` keeps what it still needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_acked_trims_only_what_every_group_has_acked() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.keep_acked = true;
    cfg.trim_interval = Duration::from_secs(3600);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(STREAM)
        .arg("audit")
        .arg("0")
        .query_async(&mut c)
        .await
        .unwrap();
    for i in 0..4 {
        enqueue_job(&mut c, &format!("j{i}"), "noop").await;
    }
    drain(&src, 4, &Settlement::Ack).await;
    assert_eq!(xlen(&mut c, STREAM).await, 4, "kept after the ack");
    assert_eq!(src.trim_acked().await.unwrap(), 0);
    assert_eq!(xlen(&mut c, STREAM).await, 4, "audit has read none of them");

    // audit reads all four and acks the first two: the other two are still its work.
    type Entries = Vec<(String, Vec<(String, String)>)>;
    let read: Vec<(String, Entries)> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("audit")
        .arg("a-1")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(STREAM)
        .arg(">")
        .query_async(&mut c)
        .await
        .unwrap();
    let ids: Vec<String> = read[0].1.iter().map(|(id, _)| id.clone()).collect();
    assert_eq!(ids.len(), 4);
    let ack = |ids: &[String]| {
        let mut cmd = redis::cmd("XACK");
        cmd.arg(STREAM).arg("audit").arg(ids);
        cmd
    };
    let _: u64 = ack(&ids[..2]).query_async(&mut c).await.unwrap();
    assert_eq!(src.trim_acked().await.unwrap(), 2);
    let left: Vec<String> = range(&mut c, STREAM)
        .await
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(left, ids[2..], "the entries audit has not acked stay");

    let _: u64 = ack(&ids[2..]).query_async(&mut c).await.unwrap();
    src.trim_acked().await.unwrap();
    assert_eq!(xlen(&mut c, STREAM).await, 0);

    // A new entry nobody has read yet is never trimmed.
    enqueue_job(&mut c, "j-new", "noop").await;
    src.trim_acked().await.unwrap();
    assert_eq!(xlen(&mut c, STREAM).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_stream_keeps_the_newest_and_counts_its_drops() {
    const JOBS: &str = "jobs:v1:capped";
    const DLQ: &str = "dlq:v1:capped";
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.streams = vec![JOBS.to_owned()];
    cfg.dlq_max_len = 3;
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let producer = RedisProducer::new(c.clone());
    for i in 0..5 {
        let (id, payload) = (format!("d{i}"), json!({"i": i}));
        let entry = JobEntry::new(&id, "fail", &payload);
        producer.enqueue(JOBS, &entry).await.unwrap();
    }
    let dead = Settlement::DeadLetter {
        reason: "bad".into(),
    };
    drain(&src, 5, &dead).await;
    let kept: Vec<String> = range(&mut c, DLQ)
        .await
        .iter()
        .map(|(_, f)| field(f, "jobId").unwrap().to_owned())
        .collect();
    assert_eq!(kept, ["d2", "d3", "d4"], "the newest stay");
    let fill = dead_letters::fill("redis:dlq:v1:capped").expect("the fill is recorded");
    assert_eq!((fill.size, fill.cap, fill.dropped), (3, 3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_jobs_events_expire_after_the_grace() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.events_grace = Duration::from_secs(30);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let meta = EventMeta::new("node-id-1", "gpu-box");
    let ttl = |id: &'static str| {
        let mut c = c.clone();
        async move {
            let ms: i64 = redis::cmd("PTTL")
                .arg(format!("stream:v1:{id}:events"))
                .query_async(&mut c)
                .await
                .unwrap();
            ms
        }
    };
    let claimed = EventData::Claimed {
        agent_version: "0".into(),
    };
    let finals = [
        ("g-end", EventData::End { result: json!({}) }),
        (
            "g-fail",
            EventData::Error {
                error: "x".into(),
                recoverable: false,
            },
        ),
        (
            "g-cancel",
            EventData::Cancelled {
                reason: "asked".into(),
            },
        ),
    ];
    for (id, last) in finals {
        let job = JobId::new(id).unwrap();
        for data in [claimed.clone(), last] {
            let ev = WireEvent::new(job.clone(), meta.clone(), data);
            src.publish(&ev).await.unwrap();
        }
        let left = ttl(id).await;
        assert!(
            left > 0 && left <= 30_000,
            "{id}: the event stream lives {left} ms after the terminal event"
        );
    }
    // A retryable error is not the end: the stream keeps its running lifetime.
    let job = JobId::new("g-retry").unwrap();
    let retry = EventData::Error {
        error: "x".into(),
        recoverable: true,
    };
    src.publish(&WireEvent::new(job, meta.clone(), retry))
        .await
        .unwrap();
    assert!(ttl("g-retry").await > 30_000);
    let _ = &mut c;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_older_than_the_age_limit_are_dropped_and_counted() {
    const JOBS: &str = "jobs:v1:aged";
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.streams = vec![JOBS.to_owned()];
    cfg.dlq_max_age = Duration::from_millis(200);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let producer = RedisProducer::new(c.clone());
    let dead = Settlement::DeadLetter {
        reason: "bad".into(),
    };
    for id in ["old", "new"] {
        let payload = json!({});
        producer
            .enqueue(JOBS, &JobEntry::new(id, "fail", &payload))
            .await
            .unwrap();
        drain(&src, 1, &dead).await;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let kept: Vec<String> = range(&mut c, "dlq:v1:aged")
        .await
        .iter()
        .map(|(_, f)| field(f, "jobId").unwrap().to_owned())
        .collect();
    assert_eq!(kept, ["new"], "the dead letter past the age limit went");
    let fill = dead_letters::fill("redis:dlq:v1:aged").unwrap();
    assert_eq!((fill.size, fill.dropped), (1, 1));
}
