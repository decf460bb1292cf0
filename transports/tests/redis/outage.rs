//! A Redis that comes back from an outage without its last writes (a restart under
//! `appendfsync everysec`, a failover to a lagging replica): a job one node finished, whose
//! completion record, ack and claim Redis forgot, is read again as a new entry; the node that
//! finished it writes its record again when it reaches Redis, and no node runs the job again.
//! A Redis that comes back empty loses every consumer group, also those of the streams a node
//! started reading after its start; the node creates them all again and takes jobs from each.

use std::time::{Duration, Instant};

use citadel_transports::redis::RedisProducer;
use citadel_transports::routing::RouteFeed;
use citadel_transports::{
    EventData, EventMeta, Incoming, JobEntry, JobSource, RedisSource, SettleContext, Settlement,
    WireEvent,
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

/// Enqueues job `id` on `stream` with the product's producer.
async fn enqueue_on(c: &redis::aio::MultiplexedConnection, stream: &str, id: &str) {
    let payload = json!({"n": 1});
    RedisProducer::new(c.clone())
        .enqueue(stream, &JobEntry::new(id, "echo", &payload))
        .await
        .unwrap();
}

/// The ids `src` hands out within `within`, each acked.
async fn take_ids(src: &RedisSource, want: usize, within: Duration) -> Vec<String> {
    let until = Instant::now() + within;
    let mut ids = Vec::new();
    while ids.len() < want && Instant::now() < until {
        // A failed round (a group Redis lost) is the fetcher's to mend: ask again.
        for item in src.next(4).await.unwrap_or_default() {
            ids.push(job(&item).id.as_str().to_string());
            // The first call on a connection the restart broke fails; the worker tries again.
            let mut tries = 0;
            while let Err(e) = src
                .settle(item.receipt(), &Settlement::Ack, &SettleContext::default())
                .await
            {
                tries += 1;
                assert!(e.is_retryable() && tries < 20, "{e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_back_empty_gets_every_group_again_also_on_a_later_stream() {
    let mut server = Server::start().await;
    let model = "jobs:v1:model:llama";
    let (tx, rx) = tokio::sync::watch::channel(vec![(STREAM.to_string(), 0u8)]);
    let mut cfg = server.config("node-a");
    cfg.routes = Some(RouteFeed::new(rx));
    let src = RedisSource::connect(cfg).await.unwrap();
    // An engine starts serving a model after the node started: its stream joins the set.
    tx.send(vec![(model.to_string(), 0), (STREAM.to_string(), 0)])
        .unwrap();
    let c = server.conn().await;
    enqueue_on(&c, model, "before").await;
    assert_eq!(take_ids(&src, 1, Duration::from_secs(10)).await, ["before"]);
    // Redis restarts without persistence: no stream, no group.
    server.stop();
    server.restart().await;
    let c = server.conn().await;
    enqueue_on(&c, model, "model-after").await;
    enqueue_on(&c, STREAM, "base-after").await;
    assert_eq!(
        take_ids(&src, 2, Duration::from_secs(20)).await,
        ["base-after", "model-after"],
        "both streams are read again"
    );
}
