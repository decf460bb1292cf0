//! Delivery: the wire format, backpressure, cancel-safety, malformed entries, restarts.

use std::collections::HashMap;
use std::time::Duration;

use citadel_transports::{Incoming, JobSource, RedisSource, SettleContext, Settlement};
use serde_json::json;

use citadel_harness::redis::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_an_entry_in_the_wire_format() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let id = enqueue(
        &mut c,
        &[
            ("jobId", "job-1"),
            ("type", "llm_inference"),
            (
                "payload",
                r#"{"model":"m","prompt":"hi","timeout_ms":"500"}"#,
            ),
            ("enqueuedAt", "2026-11-22T06:00:00Z"),
            ("rayId", "ray-7"),
        ],
    )
    .await;
    let got = next_within(&src, 10, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1);
    let Incoming::Job(d) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(d.receipt.queue(), STREAM);
    assert_eq!(d.receipt.id(), id);
    assert_eq!(d.job.id.as_str(), "job-1");
    assert_eq!(d.job.job_type, "llm_inference");
    assert_eq!(
        d.job.payload,
        json!({"model":"m","prompt":"hi","timeout_ms":"500"})
    );
    assert_eq!(d.job.enqueued_at.as_deref(), Some("2026-11-22T06:00:00Z"));
    assert_eq!(d.job.ray_id.as_deref(), Some("ray-7"));
    assert_eq!(d.job.attempt, 1);
    assert_eq!(d.job.source, "redis:jobs:v1:gpu-general");
    assert_eq!(pending(&mut c).await, vec![(id, "node-a".to_owned(), 1)]);
    assert_eq!(src.name(), "redis");
    assert!(src.health().await.healthy);
    assert_eq!(src.capabilities().lease, Some(Duration::from_secs(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_never_claims_more_than_max() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    for i in 0..10 {
        enqueue_job(&mut c, &format!("j{i}"), "noop").await;
    }
    let src = server.source("node-a").await;
    let got = next_within(&src, 3, Duration::from_secs(5)).await;
    assert!(!got.is_empty() && got.len() <= 3, "{}", got.len());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(pending(&mut c).await.len(), got.len(), "claimed beyond max");
    let mut total = got.len();
    while total < 10 {
        let more = next_within(&src, 4, Duration::from_secs(5)).await;
        assert!(!more.is_empty() && more.len() <= 4);
        total += more.len();
        assert_eq!(pending(&mut c).await.len(), total);
    }
    assert_eq!(src.next(0).await.unwrap(), vec![]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_next_loses_no_claimed_entry() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..20u64 {
        let id = format!("j{i}");
        let add_after = Duration::from_millis(5 * (i % 7));
        let drop_after = Duration::from_millis(3 * (i % 11));
        let mut c2 = c.clone();
        let adder = tokio::spawn(async move {
            tokio::time::sleep(add_after).await;
            enqueue_job(&mut c2, &id, "noop").await;
        });
        tokio::select! {
            r = src.next(1) => {
                for inc in r.unwrap() {
                    *seen.entry(job(&inc).id.to_string()).or_default() += 1;
                }
            }
            () = tokio::time::sleep(drop_after) => {}
        }
        adder.await.unwrap();
    }
    while seen.len() < 20 {
        let got = next_within(&src, 5, Duration::from_secs(5)).await;
        assert!(!got.is_empty(), "entries lost: have {} of 20", seen.len());
        for inc in got {
            *seen.entry(job(&inc).id.to_string()).or_default() += 1;
        }
    }
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    let p = pending(&mut c).await;
    assert_eq!(p.len(), 20);
    assert!(p.iter().all(|(_, _, n)| *n == 1), "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_claimed_after_next_was_dropped_comes_next_time() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.block = Duration::from_secs(2);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    // The fetcher is now blocked in XREADGROUP for this call's demand.
    let r = tokio::time::timeout(Duration::from_millis(100), src.next(1)).await;
    assert!(r.is_err());
    enqueue_job(&mut c, "late", "noop").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        pending(&mut c).await.len(),
        1,
        "claimed by the blocked read"
    );
    let got = src.next(1).await.unwrap();
    assert_eq!(job(&got[0]).id.as_str(), "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_gets_its_own_pending_entries_first() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "old-1", "noop").await;
    enqueue_job(&mut c, "old-2", "noop").await;
    {
        let first = server.source("node-a-1234").await;
        let mut got = Vec::new();
        while got.len() < 2 {
            got.extend(next_within(&first, 2, Duration::from_secs(5)).await);
        }
        // The worker dies without settling.
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    enqueue_job(&mut c, "new-1", "noop").await;
    let again = server.source("node-a-1234").await;
    // Handed out in this order, in one batch or several.
    let mut got = Vec::new();
    while got.len() < 3 {
        let batch = next_within(&again, 10, Duration::from_secs(5)).await;
        assert!(!batch.is_empty(), "only {got:?}");
        got.extend(batch);
    }
    let ids: Vec<_> = got
        .iter()
        .map(|i| (job(i).id.to_string(), job(i).attempt))
        .collect();
    assert_eq!(
        ids,
        vec![
            ("old-1".into(), 2),
            ("old-2".into(), 2),
            ("new-1".into(), 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_entries_are_reported_and_dead_lettered() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.max_payload_bytes = 64;
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let big = format!(r#"{{"type":"echo","x":"{}"}}"#, "a".repeat(100));
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, &'a str);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("type", "noop"), ("payload", "{}")],
            None,
            "missing jobId",
        ),
        (
            vec![("jobId", "b1"), ("type", "noop"), ("payload", "[1,2]")],
            Some("b1"),
            "not a JSON object",
        ),
        (
            vec![("jobId", "b2"), ("type", "noop"), ("payload", "{oops")],
            Some("b2"),
            "not valid JSON",
        ),
        (
            vec![("jobId", "b3"), ("payload", &big)],
            Some("b3"),
            "the limit is 64",
        ),
    ];
    for (fields, _, _) in &cases {
        enqueue(&mut c, fields).await;
    }
    let mut got = Vec::new();
    while got.len() < cases.len() {
        let more = next_within(&src, 10, Duration::from_secs(5)).await;
        assert!(!more.is_empty());
        got.extend(more);
    }
    for (inc, (fields, id, reason)) in got.iter().zip(&cases) {
        let Incoming::Malformed(m) = inc else {
            panic!("{inc:?}")
        };
        assert_eq!(m.job_id.as_ref().map(|j| j.as_str()), *id);
        assert!(m.reason.contains(reason), "{}", m.reason);
        let ctx = SettleContext {
            attempts: 1,
            worker_id: "w".into(),
            ..Default::default()
        };
        let dl = Settlement::DeadLetter {
            reason: m.reason.clone(),
        };
        src.settle(&m.receipt, &dl, &ctx).await.unwrap();
        let dlq = range(&mut c, "dlq:v1:gpu-general").await;
        let (_, f) = dlq.last().unwrap();
        assert_eq!(field(f, "original_message_id"), Some(m.receipt.id()));
        assert_eq!(field(f, "reason"), Some(m.reason.as_str()));
        assert_eq!(field(f, "jobId"), *id);
        let sent_payload = fields
            .iter()
            .find(|(k, _)| *k == "payload")
            .map(|(_, v)| *v);
        assert_eq!(
            field(f, "payload"),
            sent_payload,
            "the producer's exact payload text"
        );
    }
    assert!(pending(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_streams_still_respect_max() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.streams = vec![
        STREAM.into(),
        "jobs:v1:cpu-general".into(),
        "jobs:v1:tag:x".into(),
    ];
    let src = RedisSource::connect(cfg.clone()).await.unwrap();
    let mut c = server.conn().await;
    for s in &cfg.streams {
        for i in 0..3 {
            let _: String = redis::cmd("XADD")
                .arg(s)
                .arg("*")
                .arg("jobId")
                .arg(format!("{s}-{i}"))
                .arg("type")
                .arg("noop")
                .query_async(&mut c)
                .await
                .unwrap();
        }
    }
    let mut total = 0;
    while total < 9 {
        for max in [1, 2, 4] {
            let got = next_within(&src, max, Duration::from_secs(5)).await;
            assert!(got.len() <= max);
            total += got.len();
            tokio::time::sleep(Duration::from_millis(20)).await;
            let mut claimed = 0;
            for s in &cfg.streams {
                claimed += pending_in(&mut c, s).await.len();
            }
            assert_eq!(claimed, total);
            if total >= 9 {
                break;
            }
        }
    }
}
