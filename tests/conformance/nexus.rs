//! The nexus transport (full mode) under the conformance suite: a real `citadel nexus serve`
//! process; the producer is its HTTP API (submit, cancel, `GET /dlq`, the SSE event stream).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_transports::{JobSource, NexusConfig, NexusSource};
use serde_json::{json, Value};

use super::fixture::{Dead, Fixture};
use crate::support::plane::{self, Plane};

pub struct NexusFixture {
    plane: Plane,
    _dir: tempfile::TempDir,
}

impl NexusFixture {
    pub fn url(&self) -> String {
        self.plane.url()
    }

    pub fn token(&self) -> String {
        self.plane.token.clone()
    }
}

#[async_trait]
impl Fixture for NexusFixture {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let plane = Plane::start(&dir.path().join("plane"));
        Self { plane, _dir: dir }
    }

    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource> {
        let mut cfg = NexusConfig::new(self.plane.url(), worker);
        cfg.token = Some(self.plane.token.clone());
        cfg.lease = lease;
        cfg.long_poll = Duration::from_millis(500);
        cfg.block = Duration::from_millis(300);
        Arc::new(NexusSource::connect(cfg).await.expect("connect nexus"))
    }

    async fn enqueue(&self, id: &str, ty: &str, payload: Value) {
        self.plane
            .submit(json!({"id": id, "type": ty, "payload": payload}));
    }

    async fn enqueue_malformed(&self, id: &str) -> bool {
        // The control plane validates at submit: a payload that is not an object is refused
        // with a 400 that says why, and nothing is queued.
        let body = json!({"id": id, "type": "echo", "payload": "{not json"}).to_string();
        let r = self.plane.call("POST", "/api/v1/jobs", Some(&body));
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("error"), "{}", r.body);
        let r = self
            .plane
            .call("POST", "/api/v1/jobs", Some("{\"type\": 5"));
        assert_eq!(r.status, 400, "{}", r.body);
        false
    }

    async fn cancel(&self, id: &str) {
        self.plane.json(
            "POST",
            &format!("/api/v1/jobs/{id}/cancel"),
            Some(json!({"reason": "test"})),
        );
    }

    async fn dead_letters(&self) -> Vec<Dead> {
        self.plane.json("GET", "/api/v1/dlq", None)["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| Dead {
                job_id: j["id"].as_str().unwrap().to_string(),
                reason: j["dead_reason"].as_str().unwrap_or_default().to_string(),
                attempts: j["attempts"].as_u64().map(|a| a as u32),
            })
            .collect()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        // The SSE stream ends once the job is final and every event is sent.
        let auth = format!("Bearer {}", self.plane.token);
        let r = plane::raw(
            self.plane.port,
            "GET",
            &format!("/api/v1/jobs/{id}/events"),
            &[("Authorization", &auth)],
            None,
        );
        r.body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str(d.trim()).unwrap())
            .collect()
    }
}
