//! Leases: extension keeps a long job with its worker; a worker that stops extending loses it.

use std::time::{Duration, Instant};

use citadel_transports::{JobSource, Lease, Settlement};

use citadel_harness::nats::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extending_the_lease_keeps_a_long_job() {
    let server = Server::start();
    let a = server.source("node-a").await;
    let b = server.source("node-b").await;
    let p = server.producer().await;
    enqueue_job(&p, "long", "sleep").await;
    let inc = one(&a).await;
    // Three times the lease (2 s), extended every 600 ms, while another worker keeps asking.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) {
        assert_eq!(a.extend_lease(inc.receipt()).await.unwrap(), Lease::Held);
        let stolen = next_within(&b, 1, Duration::from_millis(600)).await;
        assert!(stolen.is_empty(), "a live worker's job was redelivered");
    }
    a.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    assert!(next_within(&b, 1, Duration::from_secs(3)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_stops_extending_loses_the_job() {
    let server = Server::start();
    let a = server.source("node-a").await;
    let b = server.source("node-b").await;
    let p = server.producer().await;
    enqueue_job(&p, "lost", "sleep").await;
    let inc = one(&a).await;
    let taken = Instant::now();
    let again = next_within(&b, 1, Duration::from_secs(6)).await;
    assert_eq!(again.len(), 1, "not redelivered after the lease");
    assert!(taken.elapsed() >= Duration::from_millis(1900));
    assert_eq!(job(&again[0]).id.as_str(), "lost");
    assert_eq!(job(&again[0]).attempt, 2);
    b.settle(again[0].receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    // The first worker learns it at its next extension, and its late settlement changes nothing.
    assert_eq!(a.extend_lease(inc.receipt()).await.unwrap(), Lease::Lost);
    a.settle(inc.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
}
