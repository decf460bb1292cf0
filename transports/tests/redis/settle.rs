//! Settlements: ack, retry after a delay, dead-letter, release.

use std::time::{Duration, Instant};

use citadel_transports::{
    Incoming, JobSource, RedisSource, SettleContext, Settlement, SourceError,
};

use super::one;
use citadel_harness::redis::*;

fn ctx() -> SettleContext<'static> {
    SettleContext {
        worker_id: "w-1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_removes_the_entry_from_the_pending_list() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "j1", "noop").await;
    let inc = one(&src).await;
    assert_eq!(pending(&mut c).await.len(), 1);
    src.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    assert!(pending(&mut c).await.is_empty());
    // Settling twice is harmless.
    src.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    // Nothing comes back.
    assert!(next_within(&src, 1, Duration::from_millis(500))
        .await
        .is_empty());
}

async fn retry_after(lease: Duration, delay: Duration) {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.lease = lease;
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    enqueue_job(&mut c, "j1", "fail").await;
    let inc = one(&src).await;
    assert_eq!(inc.attempt(), 1);
    let settled = Instant::now();
    src.settle(inc.receipt(), &Settlement::Retry { delay }, &ctx())
        .await
        .unwrap();
    let again = one(&src).await;
    let waited = settled.elapsed();
    assert!(
        waited >= delay,
        "redelivered after {waited:?}, before the delay {delay:?}"
    );
    assert!(
        waited < delay + Duration::from_secs(2),
        "redelivered only after {waited:?}"
    );
    assert_eq!(again.receipt(), inc.receipt());
    assert_eq!(job(&again).attempt, 2);
    assert_eq!(pending(&mut c).await[0].2, 2);
    src.settle(
        again.receipt(),
        &Settlement::Retry {
            delay: Duration::ZERO,
        },
        &ctx(),
    )
    .await
    .unwrap();
    assert_eq!(job(&one(&src).await).attempt, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_redelivers_after_the_delay_with_the_next_attempt() {
    retry_after(Duration::from_secs(2), Duration::from_millis(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_longer_than_the_lease_is_kept_until_due() {
    retry_after(Duration::from_millis(300), Duration::from_millis(1200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_is_taken_by_another_worker_when_due() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let b = server.source("node-b").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "j1", "fail").await;
    let inc = one(&a).await;
    a.settle(
        inc.receipt(),
        &Settlement::Retry {
            delay: Duration::from_millis(300),
        },
        &ctx(),
    )
    .await
    .unwrap();
    let again = one(&b).await;
    assert_eq!(job(&again).attempt, 2);
    assert_eq!(pending(&mut c).await[0].1, "node-b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_writes_every_field_and_acks() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    let payload = r#"{"cmd":"x",  "maxAttempts":3}"#;
    let id = enqueue(
        &mut c,
        &[
            ("jobId", "j-dead"),
            ("type", "fail"),
            ("payload", payload),
            ("enqueuedAt", "2026-11-22T06:00:00Z"),
        ],
    )
    .await;
    let inc = one(&src).await;
    let ctx = SettleContext {
        job: Some(job(&inc)),
        attempts: 3,
        errors: vec!["boom 1".into(), "boom \"2\"".into(), "boom 3".into()],
        worker_id: "node-a".into(),
    };
    let before = std::time::SystemTime::now();
    src.settle(
        inc.receipt(),
        &Settlement::DeadLetter {
            reason: "max attempts (3) reached".into(),
        },
        &ctx,
    )
    .await
    .unwrap();
    assert!(pending(&mut c).await.is_empty(), "acked");
    let dlq = range(&mut c, "dlq:v1:gpu-general").await;
    assert_eq!(dlq.len(), 1);
    let f = &dlq[0].1;
    assert_eq!(field(f, "original_message_id"), Some(id.as_str()));
    assert_eq!(field(f, "original_queue"), Some(STREAM));
    assert_eq!(field(f, "reason"), Some("max attempts (3) reached"));
    assert_eq!(field(f, "worker_id"), Some("node-a"));
    assert_eq!(field(f, "jobId"), Some("j-dead"));
    assert_eq!(field(f, "enqueuedAt"), Some("2026-11-22T06:00:00Z"));
    assert_eq!(field(f, "payload"), Some(payload));
    assert_eq!(field(f, "attempts"), Some("3"));
    let errors: Vec<String> = serde_json::from_str(field(f, "errors").unwrap()).unwrap();
    assert_eq!(errors, ctx.errors);
    let moved = field(f, "moved_at").unwrap();
    assert!(moved.ends_with('Z'), "{moved}");
    let moved = humantime::parse_rfc3339(moved).unwrap();
    assert!(moved + Duration::from_secs(1) >= before);
    // Idempotent: a second dead-letter of the same delivery writes nothing.
    src.settle(
        inc.receipt(),
        &Settlement::DeadLetter {
            reason: "again".into(),
        },
        &ctx,
    )
    .await
    .unwrap();
    assert_eq!(range(&mut c, "dlq:v1:gpu-general").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_gives_the_entry_back_without_counting_an_attempt() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "j1", "sleep").await;
    let inc = one(&a).await;
    for _ in 0..2 {
        a.settle(inc.receipt(), &Settlement::Release, &ctx())
            .await
            .unwrap();
        let again = one(&a).await;
        assert_eq!(again.receipt(), inc.receipt());
        assert_eq!(job(&again).attempt, 1);
    }
    // Released at shutdown: another worker takes it at once, still as attempt 1.
    let left = a.close().await;
    assert!(left.is_empty());
    a.settle(inc.receipt(), &Settlement::Release, &ctx())
        .await
        .unwrap();
    assert_eq!(a.next(1).await, Err(SourceError::Closed));
    let b = server.source("node-b").await;
    let started = Instant::now();
    let again = one(&b).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(job(&again).attempt, 1);
    // A restarted `node-a` would not see it as its own any more.
    assert_eq!(
        pending(&mut c).await,
        vec![(inc.receipt().id().to_owned(), "node-b".into(), 1)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_returns_what_was_claimed_but_not_handed_out() {
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.block = Duration::from_secs(2);
    let src = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let _ = tokio::time::timeout(Duration::from_millis(100), src.next(2)).await;
    enqueue_job(&mut c, "j1", "noop").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let left = src.close().await;
    assert_eq!(left.len(), 1);
    src.settle(left[0].receipt(), &Settlement::Release, &ctx())
        .await
        .unwrap();
    assert_eq!(
        pending(&mut c).await[0].2,
        0,
        "the release took the delivery back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settlement_of_a_foreign_receipt_is_refused() {
    let server = Server::start().await;
    let src = server.source("node-a").await;
    let r = citadel_transports::Receipt::new("jobs:v1:other", "1-0");
    let err = src.settle(&r, &Settlement::Ack, &ctx()).await.unwrap_err();
    assert!(matches!(err, SourceError::Config(_)));
    assert!(!err.is_retryable());
}

/// An `end` and the ack of its entry go to Redis in one script call, the `end` first: the ack
/// applies and the event is out; against a lease another worker holds, the event still goes
/// out and the ack is refused; other settlements are left to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_and_its_ack_travel_together() {
    use citadel_transports::{EventData, EventMeta, WireEvent};
    let server = Server::start().await;
    let mut cfg = server.config("node-a");
    cfg.lease = Duration::from_millis(300);
    let a = RedisSource::connect(cfg).await.unwrap();
    let mut cfg = server.config("node-b");
    cfg.lease = Duration::from_millis(300);
    let b = RedisSource::connect(cfg).await.unwrap();
    let mut c = server.conn().await;
    let end = |inc: &Incoming| {
        let Incoming::Job(d) = inc else {
            panic!("a job")
        };
        let data = EventData::End {
            result: serde_json::json!({"ok": true}),
        };
        WireEvent::new(d.job.id.clone(), EventMeta::new("w", "n"), data)
    };
    let ends = |c: &mut redis::aio::MultiplexedConnection, id: &str| {
        let key = format!("stream:v1:{id}:events");
        let mut c = c.clone();
        async move {
            let n: usize = redis::cmd("XLEN")
                .arg(key)
                .query_async(&mut c)
                .await
                .unwrap();
            n
        }
    };

    enqueue_job(&mut c, "j1", "noop").await;
    let inc = one(&a).await;
    let done = a
        .announce_and_settle(&end(&inc), inc.receipt(), &Settlement::Ack, &ctx())
        .await;
    assert_eq!(done, Some(Ok(())));
    assert!(pending(&mut c).await.is_empty());
    assert_eq!(ends(&mut c, "j1").await, 1);
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
    };
    assert_eq!(
        a.announce_and_settle(&end(&inc), inc.receipt(), &retry, &ctx())
            .await,
        None,
        "only an ack travels with its event"
    );

    enqueue_job(&mut c, "j2", "noop").await;
    let inc = one(&a).await;
    let taken = one(&b).await;
    assert_eq!(taken.receipt(), inc.receipt(), "b took the entry over");
    let scripts = super::calls(&mut c, "evalsha").await;
    let done = a
        .announce_and_settle(&end(&inc), inc.receipt(), &Settlement::Ack, &ctx())
        .await;
    assert_eq!(
        super::calls(&mut c, "evalsha").await,
        scripts + 1,
        "the end and its ack are one script call"
    );
    assert_eq!(
        done,
        Some(Err(SourceError::LeaseLost(inc.receipt().clone())))
    );
    assert_eq!(ends(&mut c, "j2").await, 1, "the event went out");
    assert_eq!(pending(&mut c).await[0].1, "node-b");
}
