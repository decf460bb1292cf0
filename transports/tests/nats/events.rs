//! Job events on the core subject and in the events stream, statuses, cancellation, heartbeat
//! and health.

use std::time::Duration;

use citadel_transports::{EventData, EventMeta, JobId, JobSource, WireEvent};
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use citadel_harness::nats::*;

fn events_for(id: &JobId) -> Vec<WireEvent> {
    let meta = EventMeta::new("node-1", "gpu-box");
    let mut out = vec![
        WireEvent::new(
            id.clone(),
            meta.clone(),
            EventData::Claimed {
                agent_version: "0.1.0".into(),
            },
        ),
        WireEvent::new(
            id.clone(),
            meta.clone(),
            EventData::Start {
                message: "go".into(),
            },
        ),
    ];
    for index in 0..3 {
        out.push(WireEvent::new(
            id.clone(),
            meta.clone(),
            EventData::Chunk {
                content: format!("c{index}"),
                index,
            },
        ));
    }
    out.push(WireEvent::new(
        id.clone(),
        meta,
        EventData::End {
            result: json!({"output": "done"}),
        },
    ));
    out
}

/// Events published one by one or all at once arrive in order, live and in the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_on_the_subject_and_in_the_stream() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    // An id that is not a valid subject token is encoded (`=` + hex).
    for raw in ["job-ev", "a.b >c"] {
        let id = JobId::new(raw).unwrap();
        let subject = citadel_transports::NatsConfig::events_subject(&id);
        if raw != "job-ev" {
            assert_eq!(subject, "stream.v1.=612e62203e63");
        }
        let mut live = p.client().subscribe(subject.clone()).await.unwrap();
        round_trip(&p).await;
        // One by one, and (the second job) all at once: one round trip, the same order.
        if raw == "job-ev" {
            for ev in events_for(&id) {
                src.publish(&ev).await.unwrap();
            }
        } else {
            src.publish_all(&events_for(&id)).await.unwrap();
        }
        let mut heard = Vec::new();
        while heard.len() < 6 {
            let m = tokio::time::timeout(Duration::from_secs(5), live.next())
                .await
                .expect("events arrive")
                .unwrap();
            heard.push(serde_json::from_slice::<Value>(&m.payload).unwrap());
        }
        let want = ["claimed", "start", "chunk", "chunk", "chunk", "end"];
        assert_eq!(types(&heard), want);
        assert!(heard
            .iter()
            .all(|e| e["jobId"] == raw && e["version"] == "1.0"));
        assert_eq!(heard[3]["data"]["index"], 1);
        // A late reader gets the same, in order, from the events stream.
        assert_eq!(types(&p.events(&id).await.unwrap()), want);
        let mut follow = p.follow(&id).await.unwrap();
        let (first_seq, first) = follow.next().await.unwrap().unwrap();
        assert_eq!(first["type"], "claimed");
        assert!(first_seq > 0);
        let status = p.status(&id).await.unwrap().unwrap();
        assert_eq!(status["status"], "completed");
        assert_eq!(status["worker_id"], "node-a");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_sets_the_status_with_its_error() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let id = JobId::new("j-err").unwrap();
    let ev = WireEvent::new(
        id.clone(),
        EventMeta::default(),
        EventData::Error {
            error: "boom".into(),
            recoverable: false,
        },
    );
    src.publish(&ev).await.unwrap();
    let status = p.status(&id).await.unwrap().unwrap();
    assert_eq!(status["status"], "failed");
    assert_eq!(status["error"], "boom");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_heartbeat_and_health() {
    let mut server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let id = JobId::new("to.cancel").unwrap();
    assert!(!src.is_cancelled(&id).await.unwrap());
    p.cancel(&id).await.unwrap();
    assert!(src.is_cancelled(&id).await.unwrap());
    assert!(!src
        .is_cancelled(&JobId::new("other").unwrap())
        .await
        .unwrap());

    let mut beats = p.client().subscribe("node.status.node-1").await.unwrap();
    round_trip(&p).await;
    src.heartbeat(&json!({"nodeId": "node-1", "version": "0.1.0"}))
        .await
        .unwrap();
    let m = tokio::time::timeout(Duration::from_secs(5), beats.next())
        .await
        .expect("a heartbeat arrives")
        .unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&m.payload).unwrap()["nodeId"],
        "node-1"
    );

    let h = src.health().await;
    assert!(h.healthy && h.latency.is_some(), "{h:?}");
    server.stop();
    let h = src.health().await;
    assert!(!h.healthy && h.detail.is_some(), "{h:?}");
}
