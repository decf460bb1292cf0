//! `auto` under the conformance suite: an [`AutoSource`] over Redis (preferred) and a control
//! plane, both real and healthy, so Redis is active and the producer speaks Redis. It proves the
//! routing layer (tagged receipts, per-job events and cancellation) keeps every promise of the
//! transport underneath.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_transports::{
    AutoConfig, AutoSource, JobSource, NexusConfig, NexusSource, TransportCandidate,
};
use serde_json::Value;

use super::fixture::{Dead, Fixture};
use super::nexus::NexusFixture;
use super::redis_fixture::RedisFixture;

pub struct AutoFixture {
    redis: RedisFixture,
    nexus: NexusFixture,
}

#[async_trait]
impl Fixture for AutoFixture {
    async fn start() -> Self {
        Self {
            redis: RedisFixture::start().await,
            nexus: NexusFixture::start().await,
        }
    }

    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource> {
        let redis = self.redis.source(worker, lease).await;
        let mut cfg = NexusConfig::new(self.nexus.url(), worker);
        cfg.token = Some(self.nexus.token());
        cfg.lease = lease;
        cfg.block = Duration::from_millis(300);
        let candidates = vec![
            TransportCandidate::new("redis", move || {
                let s = redis.clone();
                async move { Ok(s) }
            }),
            TransportCandidate::new("nexus", move || {
                let cfg = cfg.clone();
                async move { Ok(Arc::new(NexusSource::connect(cfg).await?) as Arc<dyn JobSource>) }
            }),
        ];
        let auto = AutoSource::start(candidates, AutoConfig::default())
            .await
            .unwrap();
        assert_eq!(auto.route().active, "redis");
        Arc::new(auto)
    }

    async fn enqueue(&self, id: &str, ty: &str, payload: Value) {
        self.redis.enqueue(id, ty, payload).await
    }

    async fn enqueue_malformed(&self, id: &str) -> bool {
        self.redis.enqueue_malformed(id).await
    }

    async fn cancel(&self, id: &str) {
        self.redis.cancel(id).await
    }

    async fn dead_letters(&self) -> Vec<Dead> {
        self.redis.dead_letters().await
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.redis.events(id).await
    }
}
