//! The websocket transport under the conformance suite: a real `citadel nexus serve` process
//! pushing jobs over `GET /api/v1/ws`; the producer is its HTTP API, as for the nexus fixture.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_transports::{websocket, JobSource, WebSocketConfig, WebSocketSource};
use serde_json::Value;

use super::fixture::{Dead, Fixture};
use super::nexus::NexusFixture;

pub struct WebSocketFixture {
    plane: NexusFixture,
}

#[async_trait]
impl Fixture for WebSocketFixture {
    async fn start() -> Self {
        Self {
            plane: NexusFixture::start().await,
        }
    }

    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource> {
        let url = websocket::ws_url(&self.plane.url()).unwrap();
        let mut cfg = WebSocketConfig::new(url, worker);
        cfg.token = Some(self.plane.token());
        cfg.lease = lease;
        cfg.block = Duration::from_millis(300);
        Arc::new(
            WebSocketSource::connect(cfg)
                .await
                .expect("connect websocket"),
        )
    }

    async fn enqueue(&self, id: &str, ty: &str, payload: Value) {
        self.plane.enqueue(id, ty, payload).await
    }

    async fn enqueue_malformed(&self, id: &str) -> bool {
        self.plane.enqueue_malformed(id).await
    }

    async fn cancel(&self, id: &str) {
        self.plane.cancel(id).await
    }

    async fn dead_letters(&self) -> Vec<Dead> {
        self.plane.dead_letters().await
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.plane.events(id).await
    }
}
