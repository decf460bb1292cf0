//! Smaller promises of the Redis transport: a retried release lowers the delivery count once, a
//! fetcher that saw Redis stall takes over no lease even on its first reclaim, and a receipt
//! nobody renews or settles any more is not held forever by its own process.

use std::time::{Duration, Instant};

use citadel_transports::{Incoming, JobSource, RedisSource, SettleContext, Settlement};

use citadel_harness::redis::*;

async fn with(server: &Server, consumer: &str, lease_ms: u64, timeout_ms: u64) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.lease = Duration::from_millis(lease_ms);
    cfg.command_timeout = Duration::from_millis(timeout_ms);
    RedisSource::connect(cfg).await.unwrap()
}

/// Everything `src` hands out during `within` (errors tolerated: Redis may be paused).
async fn handed_during(src: &RedisSource, within: Duration) -> Vec<Incoming> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < until {
        match tokio::time::timeout(Duration::from_secs(1), src.next(1)).await {
            Ok(Ok(v)) => got.extend(v),
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    got
}

/// The first thing `src` hands out within `within` (errors tolerated).
async fn first_within(src: &RedisSource, within: Duration) -> Option<Incoming> {
    let until = Instant::now() + within;
    while Instant::now() < until {
        if let Ok(Ok(mut v)) = tokio::time::timeout(Duration::from_secs(1), src.next(1)).await {
            if !v.is_empty() {
                return Some(v.remove(0));
            }
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_retried_after_a_lost_reply_lowers_the_count_once() {
    let server = Server::start().await;
    let a = with(&server, "node-a", 300, 2000).await;
    let b = with(&server, "node-b", 300, 2000).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "rel", "echo").await;
    next_within(&a, 1, Duration::from_secs(5)).await;
    drop(a);
    let got = next_within(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(job(&got[0]).attempt, 2);
    let ctx = SettleContext::default();
    // The first release's reply was lost: the runner sends it again.
    for _ in 0..2 {
        b.settle(got[0].receipt(), &Settlement::Release, &ctx)
            .await
            .unwrap();
    }
    assert_eq!(pending(&mut c).await[0].2, 1, "lowered once");
    let d = with(&server, "node-d", 300, 2000).await;
    let again = next_within(&d, 1, Duration::from_secs(5)).await;
    assert_eq!(job(&again[0]).attempt, 2, "the release counted no attempt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stall_guard_holds_on_the_first_reclaim_too() {
    let server = Server::start().await;
    let a = with(&server, "node-a", 300, 2000).await;
    let b = with(&server, "node-b", 300, 300).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "paused", "sleep").await;
    next_within(&a, 1, Duration::from_secs(5)).await;
    // `a` stays alive but its lease (300 ms) has run out by the time Redis answers again.
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(2000)
        .arg("WRITE")
        .query_async(&mut c)
        .await
        .unwrap();
    // `b` starts fetching while Redis stalls: its very first rounds fail. Until a lease plus
    // 5 s after that, it must take over nothing (the live owner gets time to renew).
    let early = handed_during(&b, Duration::from_secs(4)).await;
    assert!(
        early.is_empty(),
        "taken over during the stall guard: {early:?}"
    );
    assert_eq!(pending(&mut c).await[0].1, "node-a");
    let later = first_within(&b, Duration::from_secs(15)).await;
    assert!(later.is_some(), "taken over once the guard is over");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receipt_nobody_renews_or_settles_is_handed_out_again() {
    let server = Server::start().await;
    let a = with(&server, "node-a", 300, 2000).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "given-up", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    // The runner gave up on it (a settlement that kept failing past its budget): no renewal,
    // no settlement. After the lease the entry is delivered again, here or elsewhere.
    let again = first_within(&a, Duration::from_secs(5)).await;
    let again = again.expect("the abandoned entry stays pending for good");
    assert_eq!(again.receipt(), got[0].receipt());
    assert_eq!(job(&again).attempt, 2);
}
