//! Delivery: parsing the wire body, acking, backpressure, duplicates, malformed messages, and a
//! server restart under a running source.

use std::time::Duration;

use citadel_transports::nats::{NatsProducer, DEFAULT_STREAM};
use citadel_transports::{EventData, EventMeta, Incoming, JobSource, Settlement, WireEvent};
use serde_json::json;

use citadel_harness::nats::*;

/// Messages the job stream still holds (work-queue retention: the unfinished ones).
async fn stored(p: &NatsProducer) -> u64 {
    let mut s = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    s.info().await.unwrap().state.messages
}

/// Deliveries handed out and not acked yet.
async fn ack_pending(p: &NatsProducer) -> usize {
    let s = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    let mut c: async_nats::jetstream::consumer::PullConsumer =
        s.get_consumer("workers").await.unwrap();
    c.info().await.unwrap().num_ack_pending
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_delivered_as_the_wire_format_says_and_acked() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    // The payload as a string holding an object, as Redis entries carry it.
    p.enqueue(
        SUBJECT,
        &json!({"jobId": "j1", "payload": r#"{"type":"echo","rayId":"ray-1","x":2}"#,
                "enqueuedAt": "2026-11-22T10:00:00Z"}),
    )
    .await
    .unwrap();
    let inc = one(&src).await;
    let j = job(&inc);
    assert_eq!(j.id.as_str(), "j1");
    assert_eq!(j.job_type, "echo");
    assert_eq!(j.payload["x"], 2);
    assert_eq!(j.ray_id.as_deref(), Some("ray-1"));
    assert_eq!(j.enqueued_at.as_deref(), Some("2026-11-22T10:00:00Z"));
    assert_eq!(j.attempt, 1);
    assert_eq!(j.source, "nats:jobs.v1.gpu-general");
    assert_eq!(inc.receipt().queue(), SUBJECT);
    assert_eq!(stored(&p).await, 1);
    src.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    assert_eq!(stored(&p).await, 0, "an acked job leaves the work queue");
    // Settling twice is harmless, and nothing comes back after the lease.
    src.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    assert!(next_within(&src, 1, Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_claims_only_what_it_asks_for_and_a_dropped_call_loses_nothing() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    // Calls dropped before anything came: their demand leaves with them.
    for _ in 0..20 {
        let _ = tokio::time::timeout(Duration::from_millis(2), src.next(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..5 {
        enqueue_job(&p, &format!("j{i}"), "noop").await;
    }
    let first = next_within(&src, 2, Duration::from_secs(5)).await;
    assert!(!first.is_empty() && first.len() <= 2, "{}", first.len());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pending = ack_pending(&p).await;
    assert!(
        pending <= 3,
        "{pending} claimed for a demand of 2 (+3 dropped)"
    );
    let mut all = first;
    while all.len() < 5 {
        let more = next_within(&src, 5, Duration::from_secs(5)).await;
        assert!(!more.is_empty(), "only {} of 5 delivered", all.len());
        all.extend(more);
    }
    let mut ids: Vec<String> = all.iter().map(|i| job(i).id.to_string()).collect();
    ids.sort();
    assert_eq!(ids, ["j0", "j1", "j2", "j3", "j4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_published_twice_is_stored_once() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let a = enqueue_job(&p, "dup", "noop").await;
    let b = enqueue_job(&p, "dup", "noop").await;
    assert_eq!(a, b, "Nats-Msg-Id de-duplicates");
    assert_eq!(stored(&p).await, 1);
    let _ = one(&src).await;
}

/// A lone publisher's retry after a lost answer stores nothing, also once the server restarted
/// and a worker acked the job meanwhile: the restarted server's duplicate window no longer
/// knows the job (it is rebuilt from what the stream holds), the expected last sequence does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_publishers_retry_stores_nothing_across_a_restart() {
    let mut server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let first = enqueue_job(&p, "x1", "noop").await;
    let body = json!({"jobId": "x2", "type": "noop", "payload": {}});
    let stored_at = p.enqueue_after(SUBJECT, &body, first).await.unwrap();
    assert_eq!(stored_at, Some(first + 1));
    // Within the duplicate window a retry is answered with the sequence it was stored at.
    let retried = p.enqueue_after(SUBJECT, &body, first).await.unwrap();
    assert_eq!(retried, Some(first + 1));
    for _ in 0..2 {
        let d = one(&src).await;
        src.settle(d.receipt(), &Settlement::Ack, &ctx())
            .await
            .unwrap();
    }
    assert_eq!(stored(&p).await, 0);

    server.stop();
    server.restart();
    let p = server.producer().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let retried = loop {
        match p.enqueue_after(SUBJECT, &body, first).await {
            Ok(r) => break r,
            Err(e) => {
                assert!(std::time::Instant::now() < deadline, "no JetStream: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(retried, None, "the retry must not store x2 again");
    let state = p.stream_state(DEFAULT_STREAM).await.unwrap();
    assert_eq!((state.messages, state.last_sequence), (0, first + 1));
    // `Nats-Msg-Id` alone (nats-server 2.9) stores it a second time.
    assert_eq!(p.enqueue(SUBJECT, &body).await.unwrap(), first + 2);
}

/// Deliveries a killed nats-server 2.9 makes again because it forgot an ack or a delivery reach
/// a worker whose journal does not know the job. Its fetcher acks a completed one again (its
/// success was journaled and announced) and hands one another worker claimed lately back until
/// that worker could settle it (lease + 5 s after the claim), without counting an attempt;
/// neither is handed out before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_a_restarted_server_forgot_are_settled_or_held_back() {
    let server = Server::start();
    let a = server.source("node-a").await;
    let p = server.producer().await;
    enqueue_job(&p, "done", "noop").await;
    enqueue_job(&p, "running", "noop").await;
    let (done, running) = (one(&a).await, one(&a).await);
    let meta = EventMeta::new("node-a", "node-a");
    // node-a journals the success of `done` and announces it, and claims `running`; both of
    // their acks are lost.
    let end = EventData::End { result: json!({}) };
    a.publish(&WireEvent::for_job(job(&done), meta.clone(), end))
        .await
        .unwrap();
    let claimed = EventData::Claimed {
        agent_version: "0".into(),
    };
    a.publish(&WireEvent::for_job(job(&running), meta, claimed))
        .await
        .unwrap();
    let claimed_at = std::time::Instant::now();
    drop(a);

    // node-b connects now, so both are suspects; they come again once the 2 s lease is over.
    let b = server.source("node-b").await;
    let got = next_within(&b, 5, Duration::from_secs(15)).await;
    let ids: Vec<&str> = got.iter().map(|i| job(i).id.as_str()).collect();
    assert_eq!(ids, ["running"]);
    assert!(
        claimed_at.elapsed() >= Duration::from_secs(6),
        "held back for the lease + 5 s after the claim, not {:?}",
        claimed_at.elapsed()
    );
    assert_eq!(job(&got[0]).attempt, 2, "the hand-back is no attempt");
    b.settle(got[0].receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    assert!(next_within(&b, 5, Duration::from_secs(3)).await.is_empty());
    assert_eq!(stored(&p).await, 0, "`done` was acked again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_with_their_reason() {
    let server = Server::start();
    let mut cfg = server.config("node-a");
    cfg.max_payload_bytes = 200;
    let src = citadel_transports::NatsSource::connect(cfg).await.unwrap();
    let p = server.producer().await;
    let bodies: Vec<(Vec<u8>, &str)> = vec![
        (b"{nope".to_vec(), "not valid JSON"),
        (b"[1]".to_vec(), "not a JSON object"),
        (br#"{"type":"noop"}"#.to_vec(), "missing jobId"),
        (
            br#"{"jobId":"m4","payload":[1]}"#.to_vec(),
            "not a JSON object",
        ),
        (
            json!({"jobId":"m5","type":"echo","payload":{"x":"a".repeat(300)}})
                .to_string()
                .into_bytes(),
            "the limit is 200",
        ),
    ];
    for (body, _) in &bodies {
        p.jetstream()
            .publish(SUBJECT, body.clone().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < bodies.len() {
        let more = next_within(&src, 10, Duration::from_secs(5)).await;
        assert!(!more.is_empty());
        got.extend(more);
    }
    for (inc, (_, reason)) in got.iter().zip(&bodies) {
        let Incoming::Malformed(m) = inc else {
            panic!("expected malformed, got {inc:?}")
        };
        assert!(m.reason.contains(reason), "{} !~ {reason}", m.reason);
        src.settle(
            inc.receipt(),
            &Settlement::DeadLetter {
                reason: m.reason.clone(),
            },
            &ctx(),
        )
        .await
        .unwrap();
    }
    assert_eq!(stored(&p).await, 0);
    let dead = p.dead_letters(SUBJECT).await.unwrap();
    assert_eq!(dead.len(), bodies.len());
    assert_eq!(dead[0]["original_body"], "{nope");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    assert_eq!(dead[3]["jobId"], "m4");
    assert_eq!(dead[4]["jobId"], "m5");
    assert!(next_within(&src, 1, Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_under_a_running_source_loses_nothing() {
    let mut server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    enqueue_job(&p, "r1", "noop").await;
    enqueue_job(&p, "r2", "noop").await;
    let first = one(&src).await;
    assert_eq!(job(&first).id.as_str(), "r1");

    server.stop();
    assert!(!src.health().await.healthy);
    server.restart();

    // The receipt of a delivery made before the restart still settles it.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        match src.settle(first.receipt(), &Settlement::Ack, &ctx()).await {
            Ok(()) => break,
            Err(e) => {
                assert!(e.is_retryable(), "{e}");
                assert!(std::time::Instant::now() < deadline, "no reconnect: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    assert!(src.health().await.healthy);
    let p = server.producer().await;
    enqueue_job(&p, "r3", "noop").await;
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while ids.len() < 2 && std::time::Instant::now() < deadline {
        // Errors while the source reconnects are expected; deliveries are not lost.
        if let Ok(got) = src.next(5).await {
            for inc in got {
                ids.push(job(&inc).id.to_string());
                src.settle(inc.receipt(), &Settlement::Ack, &ctx())
                    .await
                    .unwrap();
            }
        }
    }
    ids.sort();
    assert_eq!(ids, ["r2", "r3"]);
    // r1 was acked: it never comes back.
    assert!(next_within(&src, 5, Duration::from_secs(3))
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_deleted_under_a_running_source_is_created_again() {
    let server = Server::start();
    let src = server.source("node-a").await;
    let p = server.producer().await;
    let stream = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    stream.delete_consumer("workers").await.unwrap();
    enqueue_job(&p, "after-delete", "noop").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let got = loop {
        let r = src.next(1).await;
        if let Ok(got) = r {
            if !got.is_empty() {
                break got;
            }
        }
        assert!(std::time::Instant::now() < deadline, "never delivered");
    };
    assert_eq!(job(&got[0]).id.as_str(), "after-delete");
}
