//! `extraction` against a stand-in GLiNER service on loopback: waiting for readiness, the
//! request and answer formats, and errors that say whether a retry helps.

use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel::handlers::{Extraction, ExtractionPolicy, Handler};
use serde_json::json;

use super::download::context;
use super::servers::GlinerServer;

fn handler(url: String, ready_timeout: Duration) -> Extraction {
    Extraction::new(ExtractionPolicy {
        url,
        ready_timeout,
        request_timeout: Duration::from_secs(10),
    })
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn entities_come_back_once_the_service_is_ready() {
    let service = GlinerServer::start(2).await;
    let h = handler(service.url(), Duration::from_secs(20));
    let (ctx, _rx) = context(
        "GLINER_EXTRACTION",
        json!({"text": "Ada met Alan in London", "labels": ["person"], "threshold": 0.4}),
    );
    let r = h.run(&ctx).await.unwrap();
    assert_eq!(service.state.requests.load(Ordering::SeqCst), 3);
    let texts: Vec<&str> = r["entities"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Ada", "Alan", "London"]);
    assert_eq!(
        r["entities"][1],
        json!({"start": 8, "end": 12, "text": "Alan", "label": "person", "score": 0.9})
    );
    assert_eq!(
        service.state.bodies.lock().unwrap()[0],
        json!({"text": "Ada met Alan in London", "labels": ["person"], "threshold": 0.4})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_that_never_comes_up_is_a_retryable_failure_within_the_bound() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let h = handler(
        format!("http://127.0.0.1:{port}/gliner"),
        Duration::from_millis(500),
    );
    let (ctx, _rx) = context("extraction", json!({"text": "Ada", "labels": ["person"]}));
    let started = std::time::Instant::now();
    let err = h.run(&ctx).await.unwrap_err();
    assert!(err.retryable);
    assert!(err.message.contains("not ready within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_fail_for_good() {
    let service = GlinerServer::start(0).await;
    let h = handler(service.url(), Duration::from_secs(5));
    // Refused by the handler before any request.
    let (ctx, _rx) = context("extraction", json!({"text": "Ada"}));
    assert!(!h.run(&ctx).await.unwrap_err().retryable);
    assert_eq!(service.state.requests.load(Ordering::SeqCst), 0);
    // Refused by the service (422).
    let (ctx, _rx) = context("extraction", json!({"text": "Ada", "labels": [""]}));
    let err = h.run(&ctx).await.unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("422"), "{err}");
}
