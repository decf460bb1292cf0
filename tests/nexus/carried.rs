//! The nexus transport's events that ride with the settlement, against the real control plane:
//! a job's `start` is kept and reaches the plane in the settlement's body, before the terminal
//! event; a job that runs on without settling gets its `start` on its own, and the order on the
//! plane stays the order published.

use std::time::{Duration, Instant};

use citadel_transports::{
    EventData, EventMeta, Incoming, JobSource, NexusConfig, NexusSource, SettleContext, Settlement,
    WireEvent,
};
use serde_json::json;

use crate::support::plane::*;

fn events(p: &Plane, id: &str) -> u64 {
    p.json("GET", &format!("/api/v1/jobs/{id}"), None)["events"]
        .as_u64()
        .unwrap()
}

/// The types of a finished job's events, in order.
fn types(p: &Plane, id: &str) -> Vec<String> {
    let body = p.events(id, "").body;
    sse_field(&body, "event")
        .into_iter()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn start_rides_with_the_settlement_or_follows_alone_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    for id in ["quick", "slow"] {
        p.submit(json!({"id": id, "type": "echo", "payload": {}}));
    }
    let mut cfg = NexusConfig::new(p.url(), "worker-1");
    cfg.token = Some(p.token.clone());
    let src = NexusSource::connect(cfg).await.unwrap();
    let got = next_n(&src, 2, 2).await;
    let jobs: Vec<_> = got
        .iter()
        .map(|i| match i {
            Incoming::Job(d) => d,
            other => panic!("{other:?}"),
        })
        .collect();
    let meta = EventMeta::new("n", "n");
    let publish = |i: usize, data: EventData| {
        let ev = WireEvent::for_job(&jobs[i].job, meta.clone(), data);
        let src = &src;
        async move { src.publish(&ev).await.unwrap() }
    };
    let start = || EventData::Start {
        message: "running".into(),
    };
    let ctx = SettleContext {
        worker_id: "worker-1".into(),
        ..Default::default()
    };

    // A quick job: `start` waits for the settlement and arrives with it, before `end`.
    publish(0, start()).await;
    assert_eq!(events(&p, "quick"), 0, "`start` went out on its own");
    publish(0, EventData::End { result: json!(1) }).await;
    src.settle(&jobs[0].receipt, &Settlement::Ack, &ctx)
        .await
        .unwrap();
    assert_eq!(types(&p, "quick"), ["start", "end"]);

    // A job that runs on: its `start` goes out on its own, then a chunk and the settlement.
    publish(1, start()).await;
    let waited = Instant::now();
    while events(&p, "slow") == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "`start` never sent"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(
        1,
        EventData::Chunk {
            content: "x".into(),
            index: 0,
        },
    )
    .await;
    publish(1, EventData::End { result: json!(2) }).await;
    src.settle(&jobs[1].receipt, &Settlement::Ack, &ctx)
        .await
        .unwrap();
    assert_eq!(types(&p, "slow"), ["start", "chunk", "end"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_published_right_after_start_follows_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "c", "type": "echo", "payload": {}}));
    let mut cfg = NexusConfig::new(p.url(), "worker-1");
    cfg.token = Some(p.token.clone());
    let src = NexusSource::connect(cfg).await.unwrap();
    let got = next_n(&src, 1, 1).await;
    let Incoming::Job(d) = &got[0] else {
        panic!("{got:?}")
    };
    let meta = EventMeta::new("n", "n");
    for data in [
        EventData::Start {
            message: "running".into(),
        },
        EventData::Chunk {
            content: "x".into(),
            index: 0,
        },
    ] {
        let ev = WireEvent::for_job(&d.job, meta.clone(), data);
        src.publish(&ev).await.unwrap();
    }
    assert_eq!(events(&p, "c"), 2, "the chunk was published before `start`");
    src.settle(&d.receipt, &Settlement::Release, &SettleContext::default())
        .await
        .unwrap();
    p.json("POST", "/api/v1/jobs/c/cancel", None);
    assert_eq!(types(&p, "c"), ["start", "chunk", "cancelled"]);
}
