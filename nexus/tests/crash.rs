//! What a crash of the control plane keeps of the writes it answered without a flush (a lease
//! renewal of the same length, a leased worker's non-terminal events). The crash is modelled by
//! a copy of the store's folder taken right after the last flush (what the disk held then) and
//! opened as the restarted plane's store: whatever was written after that flush is lost.

use std::path::Path;
use std::time::{Duration, Instant};

use citadel_nexus::record::{LeaseSettle, NewJob, QueueState};
use citadel_nexus::store::{Reporter, Store, StoreError};
use serde_json::{json, Map};

fn job(id: &str) -> NewJob {
    NewJob {
        id: Some(id.into()),
        job_type: "noop".into(),
        payload: Map::new(),
        ray_id: None,
        max_attempts: Some(3),
        org: None,
        requires: Vec::new(),
        target_node: None,
    }
}

/// The crash image: a copy of `from` (sled's files as the last flush left them).
fn crash_image(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            crash_image(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn event(id: &str, ty: &str, data: serde_json::Value) -> serde_json::Value {
    json!({"version": "1.0", "type": ty, "jobId": id, "timestamp": "2026-12-06T00:00:00.000Z", "data": data})
}

/// A renewal answered but lost in a crash: the restarted plane must not hand the job out before
/// the renewed lease ends, or two workers would run it at once.
#[tokio::test]
async fn a_renewal_lost_in_a_crash_still_holds_the_job() {
    let lease = Duration::from_millis(1500);
    let dir = tempfile::tempdir().unwrap();
    let (live, image) = (dir.path().join("live"), dir.path().join("image"));
    let store = Store::open(&live).unwrap();
    store.submit(job("j1")).unwrap();
    let claimed_at = Instant::now();
    let got = store.claim("default", "w1", 1, lease).unwrap();
    store.flush().await.unwrap();
    let lease_id = got[0].lease.as_ref().unwrap().id.clone();
    crash_image(&live, &image);

    tokio::time::sleep(Duration::from_millis(600)).await;
    let renewed_at = Instant::now();
    store.renew("j1", &lease_id, lease).unwrap();
    drop(store);

    // The plane restarts from the image, which never saw the renewal.
    let restarted = Store::open(&image).unwrap();
    let old_end = claimed_at + lease + Duration::from_millis(150);
    tokio::time::sleep_until(old_end.into()).await;
    assert!(
        Instant::now() < renewed_at + lease,
        "the test ran too slowly to mean anything"
    );
    restarted.expire_leases().unwrap();
    let again = restarted.claim("default", "w2", 1, lease).unwrap();
    assert!(
        again.is_empty(),
        "the job was handed to a second worker while the first still held a renewed lease: {again:?}"
    );
    assert_eq!(restarted.get("j1").unwrap().state, QueueState::Leased);
}

/// Non-terminal events are answered before they are durable; the settlement's flush, which
/// carries the terminal event, makes all of them durable with the outcome.
#[tokio::test]
async fn the_settlement_flush_keeps_the_events_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let (live, image) = (dir.path().join("live"), dir.path().join("image"));
    let store = Store::open(&live).unwrap();
    store.submit(job("j1")).unwrap();
    let got = store
        .claim("default", "w1", 1, Duration::from_secs(60))
        .unwrap();
    store.flush().await.unwrap();
    let lease = got[0].lease.as_ref().unwrap().id.clone();
    for ty in ["claimed", "start"] {
        store
            .append_event("j1", Reporter::Lease(&lease), &event("j1", ty, json!({})))
            .unwrap();
    }
    let end = event("j1", "end", json!({"result": {"answer": 42}}));
    let how = LeaseSettle::Ack { outcome: None };
    store
        .settle_reporting("j1", &lease, Some(&end), how.clone())
        .unwrap();
    store.flush().await.unwrap();
    crash_image(&live, &image);
    drop(store);

    let restarted = Store::open(&image).unwrap();
    let r = restarted.get("j1").unwrap();
    assert_eq!(r.state, QueueState::Succeeded);
    assert_eq!(r.result, Some(json!({"answer": 42})));
    let types: Vec<String> = restarted
        .events_from("j1", 0)
        .unwrap()
        .iter()
        .map(|(_, text)| {
            serde_json::from_str::<serde_json::Value>(text).unwrap()["type"].to_string()
        })
        .collect();
    assert_eq!(types, ["\"claimed\"", "\"start\"", "\"end\""]);
    // The repeat of the settlement is answered again and records the event only once.
    let again = restarted
        .settle_reporting("j1", &lease, Some(&end), how)
        .unwrap();
    assert_eq!(again.state, QueueState::Succeeded);
    assert_eq!(restarted.events_from("j1", 0).unwrap().len(), 3);
}

/// A stale lease's settlement carrying an event records neither.
#[tokio::test]
async fn a_stale_settlement_records_no_event() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store.submit(job("j1")).unwrap();
    let got = store
        .claim("default", "w1", 1, Duration::from_secs(60))
        .unwrap();
    let lease = got[0].lease.as_ref().unwrap().id.clone();
    let end = event("j1", "end", json!({"result": {}}));
    let refused = store.settle_reporting(
        "j1",
        "not-the-lease",
        Some(&end),
        LeaseSettle::Ack { outcome: None },
    );
    assert!(
        matches!(refused, Err(StoreError::LeaseLost(_))),
        "{refused:?}"
    );
    assert!(store.events_from("j1", 0).unwrap().is_empty());
    assert_eq!(store.get("j1").unwrap().lease.unwrap().id, lease);
}
