//! A Redis that comes back from an outage without its last writes (a restart under
//! `appendfsync everysec`, a failover to a lagging replica): a job one node finished, whose
//! completion record, ack and claim Redis forgot, is read again as a new entry; the node that
//! finished it writes its record again when it reaches Redis, and no node runs the job again.

use std::time::{Duration, Instant};

use citadel_transports::{
    EventData, EventMeta, Incoming, JobSource, RedisSource, SettleContext, Settlement, WireEvent,
};
use serde_json::json;

use citadel_harness::redis::*;

async fn node(server: &Server, consumer: &str) -> RedisSource {
    let mut cfg = server.config(consumer);
    cfg.lease = Duration::from_secs(2);
    cfg.block = Duration::from_millis(200);
    cfg.reclaim_interval = Duration::from_millis(100);
    RedisSource::connect(cfg).await.unwrap()
}

/// What either node hands out for `within`.
async fn handed(a: &RedisSource, b: &RedisSource, within: Duration) -> Vec<Incoming> {
    let until = Instant::now() + within;
    let mut got = Vec::new();
    while Instant::now() < until {
        let (x, y) = tokio::join!(a.next(1), b.next(1));
        got.extend(x.into_iter().chain(y).flatten());
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_finished_before_redis_forgot_it_is_not_run_again() {
    let server = Server::start().await;
    let a = node(&server, "node-a").await;
    let b = node(&server, "node-b").await;
    let mut c = server.conn().await;
    enqueue_job(&mut c, "forgotten", "echo").await;
    let item = next_within(&a, 1, Duration::from_secs(5)).await.remove(0);
    let worker = a.config().worker_id.clone();
    let end = EventData::End {
        result: json!({"output": "done"}),
    };
    a.publish(&WireEvent::for_job(
        job(&item),
        EventMeta::new(&worker, &worker),
        end,
    ))
    .await
    .unwrap();
    a.settle(item.receipt(), &Settlement::Ack, &SettleContext::default())
        .await
        .unwrap();
    // Redis loses its last second: the record, the status, the ack and the claim (the group's
    // last delivered id goes back, so the entry is new again); every connection drops.
    let _: () = redis::pipe()
        .cmd("DEL")
        .arg("job:forgotten:done")
        .arg("job:forgotten:status")
        .arg("job:forgotten:owner")
        .ignore()
        .cmd("XGROUP")
        .arg("SETID")
        .arg(&a.config().streams[0])
        .arg(&a.config().group)
        .arg("0")
        .ignore()
        .query_async(&mut c)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .query_async(&mut c)
        .await
        .unwrap_or(());
    let got = handed(&a, &b, Duration::from_secs(5)).await;
    assert!(
        got.iter().all(|i| job(i).id.as_str() != "forgotten"),
        "a job finished before the outage was handed out again: {got:?}"
    );
    let mut c = server.conn().await;
    let record: Option<String> = redis::cmd("HGET")
        .arg("job:forgotten:done")
        .arg("outcome")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(record.as_deref(), Some("completed"), "the record is back");
    assert!(
        pending(&mut c).await.is_empty(),
        "the entry was acked again"
    );
}
