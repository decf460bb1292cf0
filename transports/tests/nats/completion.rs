//! The completion record (bucket `citadel-done`): written before the runner journals a success,
//! it makes every worker ack a redelivery of the job with the recorded result instead of
//! handing it out, so a worker that dies with the success in its journal leaves nothing to run
//! again. It leaves the status alone until the `end` is published.

use std::time::{Duration, Instant};

use citadel_transports::nats::{DEFAULT_STREAM, DONE_BUCKET};
use citadel_transports::{EventData, EventMeta, JobId, JobSource, Settlement, WireEvent};
use serde_json::{json, Value};

use citadel_harness::nats::*;

const WAIT: Duration = Duration::from_secs(20);

/// node-a records a job's success (what the runner does before it journals it) and dies
/// without an `end` or an ack; the server redelivers the message after the lease to node-b,
/// which pulled before the job was stored (an ordinary redelivery, no reconnection): node-b
/// acks it with the recorded result and hands nothing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_recorded_before_its_end_is_acked_not_run_by_another_worker() {
    let server = Server::start();
    let b = server.source("node-b").await;
    let p = server.producer().await;
    enqueue_job(&p, "warm-up", "noop").await;
    let warm = one(&b).await;
    b.settle(warm.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    let a = server.source("node-a").await;
    enqueue_job(&p, "recorded", "echo").await;
    let got = one(&a).await;
    let end = EventData::End {
        result: json!({"output": "done once"}),
    };
    let ev = WireEvent::for_job(job(&got), EventMeta::new("node-a", "node-a"), end);
    a.record_success(&ev).await.unwrap();
    let id = JobId::new("recorded").unwrap();
    let done = p.jetstream().get_key_value(DONE_BUCKET).await.unwrap();
    let record: Value =
        serde_json::from_slice(&done.get("recorded").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        (&record["outcome"], &record["worker_id"]),
        (&json!("completed"), &json!("node-a"))
    );
    assert_eq!(
        record["event"],
        ev.to_json(),
        "the `end` to come, as it will be published"
    );
    assert!(p.events(&id).await.unwrap().is_empty(), "nothing published");
    assert_eq!(p.status(&id).await.unwrap(), None, "no status before `end`");
    drop(a);
    let begun = Instant::now();
    while p.stream_state(DEFAULT_STREAM).await.unwrap().messages > 0 {
        let handed = b.next(5).await.unwrap();
        assert!(handed.is_empty(), "handed out: {handed:?}");
        assert!(begun.elapsed() < WAIT, "the redelivery was never acked");
    }
    let events = p.events(&id).await.unwrap();
    let recorded: Value = serde_json::from_str(&ev.to_json()).unwrap();
    assert_eq!(events, [recorded], "the recorded result, published again");
    let status = p.status(&id).await.unwrap().unwrap();
    assert_eq!(
        (&status["status"], &status["worker_id"]),
        (&json!("completed"), &json!("node-b"))
    );
    assert!(
        next_within(&b, 5, Duration::from_secs(3)).await.is_empty(),
        "nothing comes back"
    );
    let start = EventData::Start {
        message: "late".into(),
    };
    let not_an_end = WireEvent::new(id, EventMeta::new("node-b", "node-b"), start);
    assert!(
        b.record_success(&not_an_end).await.is_err(),
        "only an `end` is a completion record"
    );
}

/// What recording a success costs on NATS: the runner waits for `record_success` (one KV put,
/// awaited) before it journals the success. This prints its distribution over 400 jobs, 8
/// settling at once, each also sending `claimed`, `start` and a chunk. Figures only, no timing
/// assertion:
/// `cargo test -p citadel-transports --test tests -- nats::completion::the_record --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_record_before_the_journal_is_measured() {
    let server = Server::start();
    let src = std::sync::Arc::new(server.source("node-a").await);
    let p = server.producer().await;
    let done = p.jetstream().get_key_value(DONE_BUCKET).await.unwrap();
    let spans = crate::record_cost::record_successes(src, |id| {
        let done = done.clone();
        async move {
            let record = done.get(id.as_str()).await.unwrap();
            assert!(
                record.is_some(),
                "{id}: no completion record once it returned"
            );
        }
    })
    .await;
    crate::record_cost::report("nats", spans);
}
