//! The owner marker (`job:{jobId}:owner`): of two copies of one `jobId` (a producer that
//! retried its `XADD`) read by two nodes while the first runs, only the first runs; the other copy waits
//! pending and, once the first settled with its completion record, is acked from the record
//! without running. A node that dies holding the marker lets the job go after the lease.

use std::time::{Duration, Instant};

use citadel_transports::{
    EventData, EventMeta, Incoming, JobSource, RedisSource, SettleContext, Settlement, WireEvent,
};
use redis::aio::MultiplexedConnection;
use serde_json::json;

use citadel_harness::redis::*;

async fn with_lease(server: &Server, consumer: &str, lease_ms: u64) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.lease = Duration::from_millis(lease_ms);
    cfg.reclaim_interval = Duration::from_millis(100);
    RedisSource::connect(cfg).await.unwrap()
}

/// What `next(1)` on `src` hands out for `within`.
async fn collect(src: &RedisSource, within: Duration) -> Vec<Incoming> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < until {
        got.extend(src.next(1).await.unwrap());
    }
    got
}

/// Node `a` takes the job's first copy and runs it; then the second copy is enqueued and only
/// `b` reads (so `a` cannot take both). Returns `a`'s delivery and what `b` handed out.
async fn split(
    a: &RedisSource,
    b: &RedisSource,
    c: &mut MultiplexedConnection,
    id: &str,
) -> (Incoming, Vec<Incoming>) {
    enqueue_job(c, id, "echo").await;
    let mut got = next_within(a, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    enqueue_job(c, id, "echo").await;
    (got.remove(0), collect(b, Duration::from_millis(800)).await)
}

async fn end_events(c: &mut MultiplexedConnection, id: &str) -> usize {
    range(c, &format!("stream:v1:{id}:events"))
        .await
        .into_iter()
        .filter(|(_, f)| field(f, "type") == Some("end"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_read_while_another_node_runs_the_job_waits_for_its_record() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 2_000).await;
    let b = with_lease(&server, "node-b", 2_000).await;
    let mut c = server.conn().await;
    let (item, got_b) = split(&a, &b, &mut c, "dup").await;
    assert!(got_b.is_empty(), "both copies were handed out: {got_b:?}");
    let (owner, other) = (&a, &b);
    let end = EventData::End {
        result: json!({"output": "once"}),
    };
    let worker = owner.config().worker_id.clone();
    let ev = WireEvent::for_job(job(&item), EventMeta::new(&worker, &worker), end);
    owner.publish(&ev).await.unwrap();
    owner
        .settle(item.receipt(), &Settlement::Ack, &SettleContext::default())
        .await
        .unwrap();
    let marker: Option<String> = redis::cmd("GET")
        .arg("job:dup:owner")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(marker, None, "the settlement drops the marker");
    // After the lease the held copy comes back to a reclaimer: the record answers it.
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let (x, y) = tokio::join!(other.next(1), owner.next(1));
        let handed: Vec<_> = x.unwrap().into_iter().chain(y.unwrap()).collect();
        assert!(
            handed.is_empty(),
            "the second copy was handed out: {handed:?}"
        );
        if pending(&mut c).await.is_empty() && end_events(&mut c, "dup").await == 2 {
            break;
        }
        assert!(Instant::now() < until, "the second copy stayed pending");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marker_goes_with_a_dead_owner_and_the_job_runs_elsewhere() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 1_500).await;
    let b = with_lease(&server, "node-b", 1_500).await;
    let mut c = server.conn().await;
    let (_, got_b) = split(&a, &b, &mut c, "orphan").await;
    assert!(got_b.is_empty(), "{got_b:?}");
    // The owner dies without settling; its marker expires with its lease.
    drop(a);
    let survivor = b;
    let got = collect(&survivor, Duration::from_secs(5)).await;
    assert!(
        got.iter().any(|i| job(i).id.as_str() == "orphan"),
        "the dead owner's job never reached the other node: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewing_owner_keeps_the_copy_held_for_many_leases() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 2_000).await;
    let b = with_lease(&server, "node-b", 2_000).await;
    let mut c = server.conn().await;
    let (item, got_b) = split(&a, &b, &mut c, "long").await;
    assert!(got_b.is_empty(), "{got_b:?}");
    let (owner, other) = (&a, &b);
    // The owner's job runs for several leases, renewing as the runner does.
    let until = Instant::now() + Duration::from_millis(6_000);
    let mut handed = Vec::new();
    while Instant::now() < until {
        owner.extend_lease(item.receipt()).await.unwrap();
        let marker: Option<String> = redis::cmd("GET")
            .arg("job:long:owner")
            .query_async(&mut c)
            .await
            .unwrap();
        let m = marker.unwrap_or_default();
        assert!(m.starts_with("node-a|"), "{m}");
        handed.extend(other.next(1).await.unwrap());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert!(
        handed.is_empty(),
        "the copy ran beside its owner: {handed:?}"
    );
    let held: Vec<_> = pending(&mut c)
        .await
        .into_iter()
        .filter(|(id, _, _)| id != item.receipt().id())
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(
        held[0].2 <= 1,
        "holding the copy counted attempts: {held:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_reading_both_copies_at_once_never_both_run_it() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 2_000).await;
    let b = with_lease(&server, "node-b", 2_000).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "race", "echo").await;
    enqueue_job(&mut c, "race", "echo").await;
    let within = Duration::from_millis(800);
    let (got_a, got_b) = tokio::join!(collect(&a, within), collect(&b, within));
    assert!(
        got_a.is_empty() || got_b.is_empty(),
        "both nodes run the job: a {got_a:?}, b {got_b:?}"
    );
    assert!(!got_a.is_empty() || !got_b.is_empty(), "nobody runs it");
}

async fn marker(c: &mut MultiplexedConnection, id: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(format!("job:{id}:owner"))
        .query_async(c)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_settlement_drops_the_marker_and_only_its_holders() {
    let server = Server::start().await;
    let a = server.source("node-a").await;
    let mut c = server.conn().await;
    let settlements = [
        Settlement::Ack,
        Settlement::Retry {
            delay: Duration::from_secs(30),
        },
        Settlement::Release,
        Settlement::DeadLetter {
            reason: "given up".into(),
        },
    ];
    for (n, s) in settlements.iter().enumerate() {
        let id = format!("settled-{n}");
        enqueue_job(&mut c, &id, "echo").await;
        let got = next_within(&a, 1, Duration::from_secs(5)).await;
        let m = marker(&mut c, &id).await.unwrap();
        assert_eq!(m, format!("node-a|{STREAM}|{}", got[0].receipt().id()));
        a.settle(got[0].receipt(), s, &SettleContext::default())
            .await
            .unwrap();
        assert_eq!(
            marker(&mut c, &id).await,
            None,
            "{} kept the marker",
            s.name()
        );
    }
    // A marker another consumer took (this one's expired meanwhile) is neither extended by
    // this consumer's renewal nor dropped by its settlement.
    enqueue_job(&mut c, "taken", "echo").await;
    let got = next_within(&a, 1, Duration::from_secs(5)).await;
    let _: () = redis::cmd("SET")
        .arg("job:taken:owner")
        .arg("node-z")
        .arg("PX")
        .arg(60_000)
        .query_async(&mut c)
        .await
        .unwrap();
    a.extend_lease(got[0].receipt()).await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg("job:taken:owner")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(ttl > 2_000, "another's marker got this lease: {ttl} ms");
    a.settle(
        got[0].receipt(),
        &Settlement::Ack,
        &SettleContext::default(),
    )
    .await
    .unwrap();
    assert_eq!(marker(&mut c, "taken").await.as_deref(), Some("node-z"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_handed_back_on_one_node_keeps_the_running_copys_marker() {
    let server = Server::start().await;
    let a = with_lease(&server, "node-a", 2_000).await;
    let b = with_lease(&server, "node-b", 2_000).await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "both-here", "echo").await;
    enqueue_job(&mut c, "both-here", "echo").await;
    let mut got = next_within(&a, 2, Duration::from_secs(5)).await;
    if got.len() < 2 {
        got.extend(next_within(&a, 1, Duration::from_secs(5)).await);
    }
    assert_eq!(got.len(), 2, "{got:?}");
    let running = marker(&mut c, "both-here").await;
    assert!(running.is_some(), "no marker for the running copy");
    // The runner hands the second copy back for later, as it does with a duplicate of a job
    // running here: the first copy's marker stays, so another node holds the copy meanwhile.
    let ctx = SettleContext {
        job: Some(job(&got[1])),
        ..SettleContext::default()
    };
    let retry = Settlement::Retry {
        delay: Duration::ZERO,
    };
    a.settle(got[1].receipt(), &retry, &ctx).await.unwrap();
    assert_eq!(
        marker(&mut c, "both-here").await,
        running,
        "the hand-back dropped it"
    );
    let handed = collect(&b, Duration::from_millis(800)).await;
    assert!(
        handed.is_empty(),
        "the copy ran beside the first: {handed:?}"
    );
}
