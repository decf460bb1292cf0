//! The promises of docs/transports.md, written once, for any [`Fixture`]: delivery and ack, cancel-safe
//! `next`, retry with a delay that counts an attempt, dead-letter with the reason and attempts,
//! lease extension, lease loss of a silent worker, release at shutdown, cancellation before start
//! and mid-run, event order, bad payloads. Each test starts its own servers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use citadel_transports::{
    Delivery, EventData, EventMeta, Incoming, JobSource, Lease, SettleContext, Settlement,
    SourceError, WireEvent,
};
use serde_json::{json, Value};

use super::fixture::Fixture;

/// Calls `next` until `want` deliveries came or `within` passed.
async fn take(src: &Arc<dyn JobSource>, want: usize, within: Duration) -> Vec<Incoming> {
    let started = Instant::now();
    let mut got = Vec::new();
    while got.len() < want && started.elapsed() < within {
        match tokio::time::timeout(within, src.next(want - got.len())).await {
            Ok(Ok(items)) => got.extend(items),
            Ok(Err(e)) if e.is_retryable() => tokio::time::sleep(Duration::from_millis(50)).await,
            Ok(Err(e)) => panic!("next failed: {e}"),
            Err(_) => break,
        }
    }
    got
}

/// Exactly one job delivery within `within`.
async fn one(src: &Arc<dyn JobSource>, within: Duration) -> Delivery {
    let got = take(src, 1, within).await;
    match got.as_slice() {
        [Incoming::Job(d)] => d.clone(),
        other => panic!("expected one job delivery within {within:?}, got {other:?}"),
    }
}

/// Nothing delivered for `quiet`.
async fn nothing(src: &Arc<dyn JobSource>, quiet: Duration, why: &str) {
    let got = take(src, 1, quiet).await;
    assert!(got.is_empty(), "{why}: got {got:?}");
}

fn ctx(worker: &str) -> SettleContext<'static> {
    SettleContext {
        worker_id: worker.into(),
        ..Default::default()
    }
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

const LEASE: Duration = Duration::from_secs(2);
const SOON: Duration = Duration::from_secs(10);

pub async fn declares_its_capabilities<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let caps = src.capabilities();
    // Every transport citadel ships keeps these promises (in full mode); the suite's other tests
    // check each one in behaviour.
    assert!(caps.events, "{} must carry job events", src.name());
    assert_eq!(
        caps.lease,
        Some(LEASE),
        "{} must lease deliveries",
        src.name()
    );
    assert!(caps.dead_letter, "{} must dead-letter", src.name());
    assert!(caps.cancellation, "{} must carry cancellation", src.name());
    assert!(src.health().await.healthy, "{}", src.name());
}

pub async fn delivers_and_acks<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let id = unique("ack");
    f.enqueue(&id, "echo", json!({"n": 7, "s": "x"})).await;
    let d = one(&src, SOON).await;
    assert_eq!(d.job.id.as_str(), id);
    assert_eq!(d.job.job_type, "echo");
    assert_eq!(d.job.payload["n"], json!(7));
    assert_eq!(d.job.payload["s"], json!("x"));
    assert_eq!(d.job.attempt, 1);
    src.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
    // Settling twice is harmless (idempotent), and an acked job never comes back, not even after
    // its lease would have run out.
    src.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
    let other = f.source("w-b", LEASE).await;
    nothing(
        &other,
        LEASE + Duration::from_secs(2),
        "an acked job came back",
    )
    .await;
}

pub async fn next_is_cancel_safe<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("cs{i}"))).collect();
    for id in &ids {
        f.enqueue(id, "noop", json!({})).await;
    }
    // Calls dropped at random points lose nothing: every job arrives exactly once later.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..40u64 {
        if let Ok(Ok(items)) =
            tokio::time::timeout(Duration::from_millis(1 + i % 7), src.next(3)).await
        {
            for it in items {
                *seen.entry(it.job_id().unwrap().to_string()).or_default() += 1;
            }
        }
    }
    let left = 3 - seen.values().sum::<usize>();
    for it in take(&src, left, SOON).await {
        *seen.entry(it.job_id().unwrap().to_string()).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = ids.iter().map(|i| (i.clone(), 1)).collect();
    assert_eq!(seen, expected);
}

pub async fn retries_after_the_delay_counting_an_attempt<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let id = unique("retry");
    f.enqueue(&id, "fail", json!({})).await;
    let d = one(&src, SOON).await;
    let delay = Duration::from_millis(1200);
    let settled = Instant::now();
    src.settle(&d.receipt, &Settlement::Retry { delay }, &ctx("w-a"))
        .await
        .unwrap();
    nothing(&src, Duration::from_millis(600), "retried before its delay").await;
    let again = one(&src, SOON).await;
    let waited = settled.elapsed();
    assert_eq!(again.job.id.as_str(), id);
    assert_eq!(again.job.attempt, 2, "a retry counts an attempt");
    assert!(
        waited >= delay - Duration::from_millis(100),
        "came back after {waited:?}"
    );
    src.settle(&again.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
}

pub async fn dead_letters_with_reason_and_attempts<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let id = unique("dlq");
    f.enqueue(&id, "fail", json!({})).await;
    let d = one(&src, SOON).await;
    let errors = vec!["e1".to_string(), "e2".to_string(), "e3".to_string()];
    let c = SettleContext {
        job: Some(&d.job),
        attempts: 3,
        errors,
        worker_id: "w-a".into(),
    };
    let reason = "failed 3 times: e3".to_string();
    src.settle(&d.receipt, &Settlement::DeadLetter { reason }, &c)
        .await
        .unwrap();
    let dead = f.dead_letters().await;
    let entry = dead
        .iter()
        .find(|x| x.job_id == id)
        .unwrap_or_else(|| panic!("{id} not in the dead-letter queue: {dead:?}"));
    assert!(entry.reason.contains("failed 3 times"), "{entry:?}");
    if let Some(a) = entry.attempts {
        assert!(a >= 1, "{entry:?}");
    }
    nothing(
        &src,
        LEASE + Duration::from_secs(1),
        "a dead-lettered job came back",
    )
    .await;
}

pub async fn extending_the_lease_keeps_a_long_job<F: Fixture>() {
    let f = F::start().await;
    // Two seconds, not one: the suite runs every transport's tests at once on two cores, and a
    // renewal answered after the store's flush must still land inside the lease.
    let lease = Duration::from_secs(2);
    let a = f.source("w-a", lease).await;
    let b = f.source("w-b", lease).await;
    let id = unique("long");
    f.enqueue(&id, "sleep", json!({"ms": 8000})).await;
    let d = one(&a, SOON).await;
    // Three leases long, extended every third of one: nobody else gets it.
    let long = 3 * lease;
    let started = Instant::now();
    let watcher = {
        let b = b.clone();
        tokio::spawn(async move { take(&b, 1, long).await })
    };
    while started.elapsed() < long {
        assert_eq!(a.extend_lease(&d.receipt).await.unwrap(), Lease::Held);
        tokio::time::sleep(lease / 3).await;
    }
    let stolen = watcher.await.unwrap();
    assert!(
        stolen.is_empty(),
        "a leased job was handed to another worker: {stolen:?}"
    );
    a.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
}

pub async fn a_silent_workers_lease_runs_out<F: Fixture>() {
    let f = F::start().await;
    let lease = Duration::from_secs(1);
    let a = f.source("w-a", lease).await;
    let b = f.source("w-b", lease).await;
    let id = unique("lost");
    f.enqueue(&id, "sleep", json!({"ms": 60000})).await;
    let d = one(&a, SOON).await;
    // Worker a goes silent (as if it died): worker b gets the job once the lease is over.
    let again = one(&b, SOON).await;
    assert_eq!(again.job.id.as_str(), id);
    assert_eq!(
        again.job.attempt, 2,
        "the lost delivery counted as an attempt"
    );
    // a comes back: its lease is gone and its late settlement is refused (where the transport
    // can tell; the journal of b's worker still keeps the job from running twice there).
    if a.capabilities().lease_loss_detected {
        assert_eq!(a.extend_lease(&d.receipt).await.unwrap(), Lease::Lost);
        match a.settle(&d.receipt, &Settlement::Ack, &ctx("w-a")).await {
            Err(SourceError::LeaseLost(_)) => {}
            other => panic!("a late ack must be refused with LeaseLost, got {other:?}"),
        }
    }
    b.settle(&again.receipt, &Settlement::Ack, &ctx("w-b"))
        .await
        .unwrap();
}

pub async fn release_gives_work_back<F: Fixture>() {
    let f = F::start().await;
    let a = f.source("w-a", LEASE).await;
    let id = unique("rel");
    f.enqueue(&id, "noop", json!({})).await;
    let d = one(&a, SOON).await;
    a.settle(&d.receipt, &Settlement::Release, &ctx("w-a"))
        .await
        .unwrap();
    // Closing hands back what was claimed ahead and never handed out (a push transport may even
    // have taken the released job again); the runner releases those too.
    for item in a.close().await {
        a.settle(item.receipt(), &Settlement::Release, &ctx("w-a"))
            .await
            .unwrap();
    }
    // Another worker gets it at once, not after the lease; the attempt is not counted where the
    // transport says so.
    let b = f.source("w-b", LEASE).await;
    let started = Instant::now();
    let again = one(&b, SOON).await;
    assert!(
        started.elapsed() < LEASE,
        "a released job waited for the lease"
    );
    assert_eq!(again.job.id.as_str(), id);
    let expected = if b.capabilities().uncounted_release {
        1
    } else {
        2
    };
    assert_eq!(again.job.attempt, expected);
    b.settle(&again.receipt, &Settlement::Ack, &ctx("w-b"))
        .await
        .unwrap();
}

async fn cancelled_within(src: &Arc<dyn JobSource>, id: &citadel_transports::JobId) -> bool {
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        if src.is_cancelled(id).await.unwrap() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn cancellation_before_start_and_mid_run<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    // Before start: either the job is never delivered, or it is delivered already cancelled.
    let early = unique("cancel-early");
    f.enqueue(&early, "sleep", json!({"ms": 10000})).await;
    f.cancel(&early).await;
    let got = take(&src, 1, Duration::from_secs(2)).await;
    if let [Incoming::Job(d)] = got.as_slice() {
        assert!(src.is_cancelled(&d.job.id).await.unwrap());
        src.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
            .await
            .unwrap();
    } else {
        assert!(got.is_empty(), "{got:?}");
    }
    // Mid-run: the worker sees it within a second or so.
    let late = unique("cancel-late");
    f.enqueue(&late, "sleep", json!({"ms": 10000})).await;
    let d = one(&src, SOON).await;
    assert_eq!(d.job.id.as_str(), late);
    assert!(!src.is_cancelled(&d.job.id).await.unwrap());
    f.cancel(&late).await;
    assert!(
        cancelled_within(&src, &d.job.id).await,
        "the cancellation of a running job was not seen"
    );
    src.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
}

pub async fn events_reach_the_producer_in_order<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let id = unique("events");
    f.enqueue(&id, "echo", json!({"k": 1})).await;
    let d = one(&src, SOON).await;
    let meta = EventMeta::new("node-1", "node one");
    let mut data = vec![
        EventData::Claimed {
            agent_version: "test".into(),
        },
        EventData::Start {
            message: "running".into(),
        },
    ];
    for index in 0..3 {
        data.push(EventData::Chunk {
            content: format!("part {index}"),
            index,
        });
    }
    data.push(EventData::End {
        result: json!({"k": 1}),
    });
    for e in data {
        src.publish(&WireEvent::for_job(&d.job, meta.clone(), e))
            .await
            .unwrap();
    }
    src.settle(&d.receipt, &Settlement::Ack, &ctx("w-a"))
        .await
        .unwrap();
    let started = Instant::now();
    let events: Vec<Value> = loop {
        let evs = f.events(&id).await;
        if evs.len() >= 6 || started.elapsed() > SOON {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["claimed", "start", "chunk", "chunk", "chunk", "end"]
    );
    for (i, e) in events[2..5].iter().enumerate() {
        assert_eq!(e["data"]["index"], json!(i));
        assert_eq!(e["data"]["content"], json!(format!("part {i}")));
    }
    for e in &events {
        assert_eq!(e["version"], "1.0");
        assert_eq!(e["jobId"], json!(id));
        assert_eq!(e["data"]["meta"]["node_id"], "node-1");
        assert!(e["timestamp"].as_str().unwrap().ends_with('Z'), "{e}");
    }
    assert_eq!(events[5]["data"]["result"], json!({"k": 1}));
}

pub async fn bad_payloads_are_dead_lettered_or_refused<F: Fixture>() {
    let f = F::start().await;
    let src = f.source("w-a", LEASE).await;
    let id = unique("bad");
    if !f.enqueue_malformed(&id).await {
        // Refused at the producer: nothing reaches a worker.
        nothing(&src, Duration::from_secs(1), "a refused job was delivered").await;
        return;
    }
    let got = take(&src, 1, SOON).await;
    let [Incoming::Malformed(m)] = got.as_slice() else {
        panic!("expected a malformed delivery, got {got:?}")
    };
    assert_eq!(m.job_id.as_ref().map(|j| j.as_str()), Some(id.as_str()));
    assert!(!m.reason.is_empty());
    src.settle(
        &m.receipt,
        &Settlement::DeadLetter {
            reason: m.reason.clone(),
        },
        &ctx("w-a"),
    )
    .await
    .unwrap();
    let dead = f.dead_letters().await;
    assert!(dead.iter().any(|x| x.job_id == id), "{dead:?}");
    // A good job behind it is not held up.
    let good = unique("good");
    f.enqueue(&good, "noop", json!({})).await;
    assert_eq!(one(&src, SOON).await.job.id.as_str(), good);
}
