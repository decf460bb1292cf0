//! Settlements: retry after a delay, dead-letter, release (and the deliveries `close()` hands
//! back at shutdown).

use std::time::{Duration, Instant};

use citadel_transports::{JobSource, SettleContext, Settlement};

use citadel_harness::nats::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_redelivers_after_the_delay_and_counts_an_attempt() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let seq = enqueue_job(&p, "j1", "fail").await;
    let inc = one(&src).await;
    assert_eq!(inc.attempt(), 1);
    let delay = Duration::from_millis(1200);
    let settled = Instant::now();
    src.settle(inc.receipt(), &Settlement::Retry { delay }, &ctx())
        .await
        .unwrap();
    let again = one(&src).await;
    let waited = settled.elapsed();
    assert!(waited >= delay, "redelivered after {waited:?}");
    assert!(
        waited < delay + Duration::from_secs(2),
        "only after {waited:?}"
    );
    assert_eq!(job(&again).attempt, 2);
    assert_eq!(job(&again).id.as_str(), "j1");
    let info = citadel_transports::nats::ack_info(again.receipt().id()).unwrap();
    assert_eq!(info.stream_sequence, seq);
    assert_eq!(info.delivered, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_keeps_the_job_with_reason_and_attempts() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let seq = enqueue_job(&p, "poison", "fail").await;
    let inc = one(&src).await;
    let ctx = SettleContext {
        job: Some(job(&inc)),
        attempts: 3,
        errors: vec!["boom 1".into(), "boom 2".into(), "boom 3".into()],
        worker_id: "node-a-1".into(),
    };
    let reason = "failed 3 times (max 3 attempts)".to_string();
    src.settle(inc.receipt(), &Settlement::DeadLetter { reason }, &ctx)
        .await
        .unwrap();
    // Idempotent: a second dead-letter of the same delivery stores no second letter.
    src.settle(
        inc.receipt(),
        &Settlement::DeadLetter {
            reason: "again".into(),
        },
        &ctx,
    )
    .await
    .unwrap();
    let dead = p.dead_letters(SUBJECT).await.unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let d = &dead[0];
    assert_eq!(d["jobId"], "poison");
    assert_eq!(d["type"], "fail");
    assert_eq!(d["payload"], serde_json::json!({"n": 1}));
    assert_eq!(d["reason"], "failed 3 times (max 3 attempts)");
    assert_eq!(d["attempts"], 3);
    assert_eq!(d["errors"][2], "boom 3");
    assert_eq!(d["worker_id"], "node-a-1");
    assert_eq!(d["original_subject"], SUBJECT);
    assert_eq!(d["original_stream_sequence"], seq);
    assert!(humantime::parse_rfc3339(d["moved_at"].as_str().unwrap()).is_ok());
    assert!(next_within(&src, 1, Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_hands_back_what_was_claimed_and_release_gives_it_to_another_worker_at_once() {
    let server = Server::start();
    let a = server.source("node-a").await;
    let p = server.producer().await;
    // A call that gave up leaves a pull request open: what it brings waits in the inbox.
    let _ = tokio::time::timeout(Duration::from_millis(20), a.next(5)).await;
    enqueue_job(&p, "u1", "noop").await;
    enqueue_job(&p, "u2", "noop").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let unhanded = a.close().await;
    assert_eq!(unhanded.len(), 2, "{unhanded:?}");
    assert!(matches!(
        a.next(1).await,
        Err(citadel_transports::SourceError::Closed)
    ));
    let released = Instant::now();
    for inc in &unhanded {
        a.settle(inc.receipt(), &Settlement::Release, &ctx())
            .await
            .unwrap();
    }
    let b = server.source("node-b").await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let more = next_within(&b, 2, Duration::from_secs(5)).await;
        assert!(!more.is_empty());
        got.extend(more);
    }
    assert!(
        released.elapsed() < Duration::from_secs(2),
        "released jobs waited for the lease"
    );
    // The server counts the released delivery; the source does not.
    assert!(got.iter().all(|i| job(i).attempt == 1), "{got:?}");
    // A real failure after that is attempt 2.
    b.settle(
        got[0].receipt(),
        &Settlement::Retry {
            delay: Duration::ZERO,
        },
        &ctx(),
    )
    .await
    .unwrap();
    let again = next_within(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert_eq!(job(&again[0]).attempt, 2);
}

/// The `DLQ` stream is capped (`max_msgs`, discard old): the newest dead letters stay and the
/// drops are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_stream_keeps_the_newest_up_to_its_cap() {
    let server = Server::start();
    let mut cfg = server.config("node-a");
    cfg.dlq_max_msgs = 2;
    cfg.dlq_max_age = Duration::from_secs(3600);
    let src = citadel_transports::NatsSource::connect(cfg).await.unwrap();
    let p = server.producer().await;
    for i in 0..4 {
        enqueue_job(&p, &format!("d{i}"), "fail").await;
        let inc = one(&src).await;
        let reason = "bad".to_string();
        src.settle(inc.receipt(), &Settlement::DeadLetter { reason }, &ctx())
            .await
            .unwrap();
    }
    let dead = p.dead_letters(SUBJECT).await.unwrap();
    let ids: Vec<&str> = dead.iter().map(|d| d["jobId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["d2", "d3"], "the newest stay");
    let fill = citadel_transports::dead_letters::fill("nats:DLQ").expect("recorded");
    assert!(fill.dropped >= 2, "the drops are counted: {fill:?}");
}
