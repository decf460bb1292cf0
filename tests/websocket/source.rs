//! `WebSocketSource` against the real control plane.

use std::time::{Duration, Instant};

use citadel_transports::websocket::ws_url;
use citadel_transports::{
    EventData, EventMeta, Incoming, JobSource, Lease, Receipt, SettleContext, Settlement,
    SourceError, WebSocketConfig, WebSocketSource, WireEvent,
};
use serde_json::json;

use crate::support::plane::*;

pub fn cfg(p: &Plane, worker: &str) -> WebSocketConfig {
    let mut c = WebSocketConfig::new(ws_url(&p.url()).unwrap(), worker);
    c.token = Some(p.token.clone());
    c.lease = Duration::from_secs(5);
    c
}

fn job(i: &Incoming) -> &citadel_transports::Delivery {
    match i {
        Incoming::Job(d) => d,
        other => panic!("not a job: {other:?}"),
    }
}

fn ctx(errors: &[&str]) -> SettleContext<'static> {
    SettleContext {
        worker_id: "worker-1".into(),
        errors: errors.iter().map(|e| e.to_string()).collect(),
        ..Default::default()
    }
}

/// The SSE `event:` names of a finished job, in order.
pub fn sse_types(p: &Plane, id: &str) -> Vec<String> {
    let r = p.call("GET", &format!("/api/v1/jobs/{id}/events"), None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter_map(|l| l.strip_prefix("event:"))
        .map(|t| t.trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn jobs_are_pushed_acked_retried_and_dead_lettered() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "a0", "type": "echo", "payload": {"n": 1}, "rayId": "ray"}));
    let src = WebSocketSource::connect(cfg(&p, "worker-1")).await.unwrap();
    assert!(src.health().await.healthy);
    let caps = src.capabilities();
    assert_eq!(caps.lease, Some(Duration::from_secs(5)));
    assert!(caps.events && caps.cancellation && caps.dead_letter);
    let nodes = p.json("GET", "/api/v1/nodes", None);
    assert_eq!(nodes[0]["id"], "worker-1", "hello registers the node");
    src.heartbeat(&json!({"status": "draining", "worker": {"in_flight": 0}}))
        .await
        .unwrap();
    let nodes = p.json("GET", "/api/v1/nodes", None);
    assert_eq!(nodes[0]["status"], "draining", "{nodes}");

    let got = next_n(&src, 4, 1).await;
    assert_eq!(got.len(), 1);
    let d = job(&got[0]);
    assert_eq!(
        (d.job.id.as_str(), d.job.attempt, d.job.source.as_str()),
        ("a0", 1, "websocket")
    );
    assert_eq!(d.job.payload, json!({"n": 1}));
    assert_eq!(d.job.ray_id.as_deref(), Some("ray"));
    let meta = EventMeta::new("n", "n");
    for data in [
        EventData::Claimed {
            agent_version: "1".into(),
        },
        EventData::Start {
            message: "go".into(),
        },
        EventData::End {
            result: json!({"n": 1}),
        },
    ] {
        src.publish(&WireEvent::for_job(&d.job, meta.clone(), data))
            .await
            .unwrap();
    }
    src.settle(&d.receipt, &Settlement::Ack, &ctx(&[]))
        .await
        .unwrap();
    let rec = p.json("GET", "/api/v1/jobs/a0", None);
    assert_eq!(
        (rec["state"].as_str(), &rec["result"]),
        (Some("succeeded"), &json!({"n": 1}))
    );
    assert_eq!(sse_types(&p, "a0"), ["claimed", "start", "end"]);
    src.settle(&d.receipt, &Settlement::Ack, &ctx(&[]))
        .await
        .expect("settling twice succeeds");

    // Retry: delivered again as attempt 2; then dead-lettered with its history.
    p.submit(json!({"id": "r0", "type": "fail", "maxAttempts": 2}));
    let first = next_n(&src, 1, 1).await;
    let retry = Settlement::Retry {
        delay: Duration::from_millis(100),
    };
    src.settle(&job(&first[0]).receipt, &retry, &ctx(&["boom 1"]))
        .await
        .unwrap();
    let second = next_n(&src, 1, 1).await;
    let d2 = job(&second[0]);
    assert_eq!((d2.job.id.as_str(), d2.job.attempt), ("r0", 2));
    // A lease that is not held: settling fails with LeaseLost, renewing says Lost.
    let bogus = Receipt::new("r0", "not-the-lease");
    assert!(matches!(
        src.settle(&bogus, &Settlement::Ack, &ctx(&[])).await,
        Err(SourceError::LeaseLost(_))
    ));
    assert_eq!(src.extend_lease(&bogus).await.unwrap(), Lease::Lost);
    let dead = Settlement::DeadLetter {
        reason: "gave up".into(),
    };
    src.settle(&d2.receipt, &dead, &ctx(&["boom 1", "boom 2"]))
        .await
        .unwrap();
    let dlq = p.json("GET", "/api/v1/dlq", None);
    assert_eq!(dlq["jobs"][0]["id"], "r0");
    assert_eq!(dlq["jobs"][0]["dead_reason"], "gave up");
    assert_eq!(dlq["jobs"][0]["errors"], json!(["boom 1", "boom 2"]));

    let mut wrong = cfg(&p, "worker-1");
    wrong.token = Some("wrong".into());
    let e = WebSocketSource::connect(wrong).await.unwrap_err();
    assert!(matches!(e, SourceError::Config(_)), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_lease_holds_and_a_dead_socket_loses_it() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "long", "type": "sleep"}));
    let mut c = cfg(&p, "worker-1");
    c.lease = Duration::from_secs(1);
    let a = WebSocketSource::connect(c.clone()).await.unwrap();
    let got = next_n(&a, 1, 1).await;
    let d = job(&got[0]).clone();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(a.extend_lease(&d.receipt).await.unwrap(), Lease::Held);
    }
    let rec = p.json("GET", "/api/v1/jobs/long", None);
    assert_eq!(
        (rec["state"].as_str(), rec["attempts"].as_u64()),
        (Some("leased"), Some(1))
    );

    // The worker's socket dies: the lease runs out and another worker gets the job.
    drop(a);
    c.worker_id = "worker-2".into();
    let b = WebSocketSource::connect(c).await.unwrap();
    let started = Instant::now();
    let got = next_n(&b, 1, 1).await;
    let d2 = job(&got[0]);
    assert_eq!((d2.job.id.as_str(), d2.job.attempt), ("long", 2));
    assert!(started.elapsed() < Duration::from_secs(10));
    let rec = p.json("GET", "/api/v1/jobs/long", None);
    assert_eq!(rec["lease"]["worker"], "worker-2");
}

#[tokio::test(flavor = "multi_thread")]
async fn close_gives_back_pushed_jobs_and_stops_the_push() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    for i in 0..3 {
        p.submit(json!({"id": format!("c{i}"), "type": "noop"}));
    }
    let src = WebSocketSource::connect(cfg(&p, "worker-1")).await.unwrap();
    let mut taken = next_n(&src, 1, 1).await;
    // Calls dropped before their jobs arrive leave them in the inbox (cancel-safe).
    let leased = || {
        p.json("GET", "/api/v1/jobs?state=leased", None)["jobs"]
            .as_array()
            .unwrap()
            .len()
    };
    let started = Instant::now();
    while leased() < 3 {
        if let Ok(got) = tokio::time::timeout(Duration::from_millis(1), src.next(2)).await {
            taken.extend(got.unwrap());
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the credit never reached the server"
        );
    }
    let back = src.close().await;
    assert_eq!(
        taken.len() + back.len(),
        3,
        "taken {taken:?}, given back {back:?}"
    );
    assert!(matches!(src.next(1).await, Err(SourceError::Closed)));
    for b in &back {
        src.settle(b.receipt(), &Settlement::Release, &ctx(&[]))
            .await
            .unwrap();
        let rec = p.json(
            "GET",
            &format!("/api/v1/jobs/{}", b.job_id().unwrap()),
            None,
        );
        assert_eq!(
            (rec["state"].as_str(), rec["attempts"].as_u64()),
            (Some("queued"), Some(0))
        );
    }
    // Work already running still settles after close; nothing new is pushed.
    for t in &taken {
        src.settle(t.receipt(), &Settlement::Ack, &ctx(&[]))
            .await
            .unwrap();
    }
    p.submit(json!({"id": "late", "type": "noop"}));
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(p.json("GET", "/api/v1/jobs/late", None)["state"], "queued");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancellation_reaches_the_worker_within_a_second() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    p.submit(json!({"id": "k0", "type": "sleep"}));
    let src = WebSocketSource::connect(cfg(&p, "worker-1")).await.unwrap();
    let got = next_n(&src, 1, 1).await;
    let d = job(&got[0]);
    assert!(!src.is_cancelled(&d.job.id).await.unwrap());
    let asked = Instant::now();
    p.json(
        "POST",
        "/api/v1/jobs/k0/cancel",
        Some(json!({"reason": "changed my mind"})),
    );
    while !src.is_cancelled(&d.job.id).await.unwrap() {
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "no cancel notice within a second"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_control_plane_is_detected_and_the_worker_reconnects() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let mut c = cfg(&p, "worker-1");
    c.ping = Duration::from_millis(200);
    c.dead_after = Duration::from_secs(1);
    c.request_timeout = Duration::from_secs(1);
    let src = WebSocketSource::connect(c).await.unwrap();
    assert!(src.is_connected());
    // A job this worker holds across the reconnect: sent again after the new hello, ignored.
    p.submit(json!({"id": "held", "type": "sleep"}));
    let held = next_n(&src, 1, 1).await;
    assert_eq!(job(&held[0]).job.id.as_str(), "held");
    let pid = rustix::process::Pid::from_raw(p.pid().unwrap() as i32).unwrap();
    let signal = |sig| rustix::process::kill_process(pid, sig).unwrap();
    signal(rustix::process::Signal::STOP);
    let stopped = Instant::now();
    while src.is_connected() {
        assert!(
            stopped.elapsed() < Duration::from_secs(5),
            "the dead peer went unnoticed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let noticed = stopped.elapsed();
    assert!(!src.health().await.healthy);
    // Meanwhile requests fail at once and retryably (the runner retries settlements).
    let e = src
        .settle(&Receipt::new("x", "y"), &Settlement::Ack, &ctx(&[]))
        .await
        .unwrap_err();
    assert!(e.is_retryable(), "{e}");
    signal(rustix::process::Signal::CONT);
    let resumed = Instant::now();
    while !src.is_connected() {
        assert!(resumed.elapsed() < Duration::from_secs(15), "no reconnect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(src.connections() >= 2);
    p.submit(json!({"id": "after", "type": "noop"}));
    let got = next_n(&src, 2, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(job(&got[0]).job.id.as_str(), "after");
    src.settle(&job(&held[0]).receipt, &Settlement::Ack, &ctx(&[]))
        .await
        .expect("the lease held across the reconnect");
    eprintln!("dead peer noticed after {noticed:?}");
}
