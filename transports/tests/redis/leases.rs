//! Leases: a dead worker's entries are reclaimed, a live worker's never are; Redis going away.

use std::time::{Duration, Instant};

use citadel_transports::{JobSource, Lease, RedisSource, SettleContext, Settlement, SourceError};

use citadel_harness::redis::*;

use super::calls;

async fn with_lease(server: &Server, consumer: &str, lease_ms: u64) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.lease = Duration::from_millis(lease_ms);
    RedisSource::connect(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_workers_entry_is_reclaimed_after_the_lease() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 300).await;
    let b = with_lease(&server, "node-b", 300).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "j1", "sleep").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    let receipt = got[0].receipt().clone();
    let claimed = Instant::now();
    let again = next_within(&b, 1, Duration::from_secs(5)).await;
    assert_eq!(again.len(), 1);
    assert!(
        claimed.elapsed() >= Duration::from_millis(300),
        "{:?}",
        claimed.elapsed()
    );
    assert_eq!(again[0].receipt(), &receipt);
    assert_eq!(job(&again[0]).attempt, 2);
    // The silent worker finds out and cannot settle.
    assert_eq!(a.extend_lease(&receipt).await.unwrap(), Lease::Lost);
    let ctx = SettleContext::default();
    let err = a
        .settle(&receipt, &Settlement::Ack, &ctx)
        .await
        .unwrap_err();
    assert_eq!(err, SourceError::LeaseLost(receipt.clone()));
    assert_eq!(pending(&mut c).await[0].1, "node-b");
    b.settle(&receipt, &Settlement::Ack, &ctx).await.unwrap();
    assert!(pending(&mut c).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_worker_extending_its_lease_is_never_reclaimed_from() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 300).await;
    let b = with_lease(&server, "node-b", 300).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "long", "sleep").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    let receipt = got[0].receipt().clone();
    let until = Instant::now() + Duration::from_millis(1500);
    let keeper = async {
        while Instant::now() < until {
            assert_eq!(a.extend_lease(&receipt).await.unwrap(), Lease::Held);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let thieves = async {
        let mut stolen = Vec::new();
        while Instant::now() < until {
            stolen.extend(b.next(1).await.unwrap());
            // The owner's own reclaimer skips the entry it is running.
            stolen.extend(a.next(1).await.unwrap());
        }
        stolen
    };
    let ((), stolen) = tokio::join!(keeper, thieves);
    assert!(stolen.is_empty(), "{stolen:?}");
    assert_eq!(
        pending(&mut c).await,
        vec![(receipt.id().to_owned(), "node-a".into(), 1)]
    );
    a.settle(&receipt, &Settlement::Ack, &SettleContext::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_gives_retryable_errors_and_recovers() {
    let mut server = Server::start().await;
    let src = server.source("node-a").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "before", "noop").await;
    let got = next_within(&src, 1, Duration::from_secs(5)).await;
    let receipt = got[0].receipt().clone();
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match src.next(1).await {
            Err(e) => break e,
            Ok(v) => assert!(v.is_empty()),
        }
        assert!(Instant::now() < deadline, "no error while redis is down");
    };
    assert!(err.is_retryable(), "{err:?}");
    assert!(!src.health().await.healthy);
    let settle = src
        .settle(&receipt, &Settlement::Ack, &SettleContext::default())
        .await;
    assert!(settle.unwrap_err().is_retryable());
    // Back (empty, as it keeps no data): the source reconnects and re-creates its group.
    server.restart().await;
    let mut c = server.conn().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !src.health().await.healthy {
        assert!(Instant::now() < deadline, "no reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A producer enqueues before the group exists again: the group is created from the start
    // of the stream, so the job is not skipped.
    enqueue_job(&mut c, "after", "noop").await;
    let mut got = Vec::new();
    while got.is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing delivered after the restart"
        );
        if let Ok(v) = src.next(1).await {
            got = v;
        }
    }
    assert_eq!(job(&got[0]).id.as_str(), "after");
}

/// A claim made moments ago stands for the job's first renewal, and the gate's look at the
/// cancellation flag for the check before the start: neither costs a round trip. Later ones ask
/// Redis, and a claim too old for that is renewed on Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_claim_stands_for_the_first_renewal_and_cancellation_check() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 4_000).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "fresh", "sleep").await;
    enqueue_job(&mut c, "old", "sleep").await;
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:fresh")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    assert_eq!(job(&got[0]).id.as_str(), "fresh");
    let (claims, exists) = (calls(&mut c, "xclaim").await, calls(&mut c, "exists").await);
    let id = job(&got[0]).id.clone();
    assert!(a.is_cancelled(&id).await.unwrap());
    assert_eq!(a.extend_lease(got[0].receipt()).await.unwrap(), Lease::Held);
    assert_eq!(calls(&mut c, "xclaim").await, claims, "no renewal sent");
    assert_eq!(calls(&mut c, "exists").await, exists, "no flag read");
    assert!(a.is_cancelled(&id).await.unwrap());
    assert_eq!(a.extend_lease(got[0].receipt()).await.unwrap(), Lease::Held);
    assert_eq!(
        calls(&mut c, "xclaim").await,
        claims + 1,
        "the next renewal"
    );
    assert!(calls(&mut c, "exists").await > exists, "the next check");

    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    assert_eq!(job(&got[0]).id.as_str(), "old");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let claims = calls(&mut c, "xclaim").await;
    assert_eq!(a.extend_lease(got[0].receipt()).await.unwrap(), Lease::Held);
    assert_eq!(
        calls(&mut c, "xclaim").await,
        claims + 1,
        "an old claim is renewed"
    );
}
