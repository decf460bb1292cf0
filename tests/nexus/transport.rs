//! The nexus `JobSource` against the real control plane: full mode (claims sized to `max`,
//! leases, events, cancellation, settlements) and plain mode (docs/wire-format.md#nexus-http only, as the Go agent).

use std::time::Duration;

use citadel_transports::{
    EventData, EventMeta, Incoming, JobSource, Lease, NexusConfig, NexusSource, SettleContext,
    Settlement, SourceError, WireEvent,
};
use serde_json::json;

use crate::support::plane::*;

fn cfg(p: &Plane) -> NexusConfig {
    let mut c = NexusConfig::new(p.url(), "worker-1");
    c.token = Some(p.token.clone());
    c.lease = Duration::from_secs(5);
    c
}

fn ctx() -> SettleContext<'static> {
    SettleContext {
        worker_id: "worker-1".into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_full_transport_claims_leases_reports_and_settles() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    for i in 0..3 {
        p.submit(
            json!({"id": format!("t-{i}"), "type": "echo", "payload": {"i": i}, "rayId": "ray"}),
        );
    }
    let src = NexusSource::connect(cfg(&p)).await.unwrap();
    assert!(src.is_full());
    assert!(src.health().await.healthy);
    assert_eq!(src.capabilities().lease, Some(Duration::from_secs(5)));
    let got = next_n(&src, 2, 2).await;
    assert_eq!(got.len(), 2, "never more than max");
    let Incoming::Job(d) = &got[0] else {
        panic!("{got:?}")
    };
    assert_eq!(d.job.id.as_str(), "t-0");
    assert_eq!(
        d.job.payload,
        json!({"i": 0}),
        "the payload keeps its types"
    );
    assert_eq!(d.job.ray_id.as_deref(), Some("ray"));
    assert_eq!(d.job.attempt, 1);
    assert_eq!(src.extend_lease(&d.receipt).await.unwrap(), Lease::Held);

    let meta = EventMeta::new("n", "n");
    for data in [
        EventData::Claimed {
            agent_version: "1".into(),
        },
        EventData::End {
            result: json!({"i": 0}),
        },
    ] {
        src.publish(&WireEvent::for_job(&d.job, meta.clone(), data))
            .await
            .unwrap();
    }
    assert!(!src.is_cancelled(&d.job.id).await.unwrap());
    src.settle(&d.receipt, &Settlement::Ack, &ctx())
        .await
        .unwrap();
    let job = p.json("GET", "/api/v1/jobs/t-0", None);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["result"], json!({"i": 0}));
    assert_eq!(job["events"], 2);
    src.settle(&d.receipt, &Settlement::Ack, &ctx())
        .await
        .unwrap();

    // Cancellation is seen; dead-lettering keeps the reason.
    let Incoming::Job(d1) = &got[1] else { panic!() };
    p.json("POST", "/api/v1/jobs/t-1/cancel", None);
    assert!(src.is_cancelled(&d1.job.id).await.unwrap());
    src.settle(
        &d1.receipt,
        &Settlement::DeadLetter {
            reason: "poison".into(),
        },
        &ctx(),
    )
    .await
    .unwrap();
    assert_eq!(
        p.json("GET", "/api/v1/dlq", None)["jobs"][0]["dead_reason"],
        "poison"
    );

    // close() hands back what was claimed but never returned; release gives it back.
    let src2 = NexusSource::connect(cfg(&p)).await.unwrap();
    let got = next_n(&src2, 1, 1).await;
    let Incoming::Job(d2) = &got[0] else { panic!() };
    let stolen = d2.receipt.clone();
    // A lease held by someone else: settling fails with LeaseLost and changes nothing.
    p.json(
        "POST",
        "/api/v1/jobs/t-2/settle",
        Some(json!({"lease_id": stolen.id(), "action": "release"})),
    );
    let _other = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w9", "max": 1})),
    );
    // (A claim answered a moment ago may stand for the first renewal: the second one asks.)
    let _ = src2.extend_lease(&stolen).await;
    assert_eq!(src2.extend_lease(&stolen).await.unwrap(), Lease::Lost);
    assert!(matches!(
        src2.settle(&stolen, &Settlement::Ack, &ctx()).await,
        Err(SourceError::LeaseLost(_))
    ));
    assert!(src2.close().await.is_empty());
    assert!(matches!(src2.next(1).await, Err(SourceError::Closed)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_token_is_a_configuration_error() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let mut c = cfg(&p);
    c.token = Some("wrong".into());
    let e = NexusSource::connect(c).await.unwrap_err();
    assert!(matches!(e, SourceError::Config(_)), "{e}");
    assert!(!e.is_retryable());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plain_poller_of_spec_9_4_is_still_served() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let mut c = cfg(&p);
    c.force_plain = true;
    c.poll_interval = Duration::from_millis(200);
    let src = NexusSource::connect(c).await.unwrap();
    assert!(!src.is_full());
    assert_eq!(src.capabilities().lease, None);
    p.submit(json!({"id": "plain-1", "type": "echo", "payload": {"msg": "hi", "n": 3}}));
    let got = next_n(&src, 4, 1).await;
    assert_eq!(got.len(), 1, "one job per poll");
    let Incoming::Job(d) = &got[0] else { panic!() };
    assert_eq!(
        d.job.payload,
        json!({"msg": "hi", "n": "3"}),
        "plain-mode payloads (docs/wire-format.md#nexus-http) are strings"
    );
    src.publish(&WireEvent::for_job(
        &d.job,
        EventMeta::default(),
        EventData::End {
            result: json!({"output": "hello"}),
        },
    ))
    .await
    .unwrap();
    src.settle(&d.receipt, &Settlement::Ack, &ctx())
        .await
        .unwrap();
    let job = p.json("GET", "/api/v1/jobs/plain-1", None);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["output"], "hello");

    p.submit(json!({"id": "plain-2", "type": "nope"}));
    let got = next_n(&src, 1, 1).await;
    let Incoming::Job(d) = &got[0] else { panic!() };
    src.settle(
        &d.receipt,
        &Settlement::DeadLetter {
            reason: "unknown type".into(),
        },
        &ctx(),
    )
    .await
    .unwrap();
    let job = p.json("GET", "/api/v1/jobs/plain-2", None);
    assert_eq!(
        (job["state"].as_str(), job["output"].as_str()),
        (Some("failed"), Some("unknown type"))
    );
}
