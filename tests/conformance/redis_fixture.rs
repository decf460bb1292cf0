//! The Redis Streams transport under the conformance suite: a real redis-server, entries written
//! as docs/wire-format.md#job-entries, cancellation keys, the `dlq:v1:…` stream and the capped event stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_harness::redis::{self as harness, Server};
use citadel_transports::{JobSource, RedisSource};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use super::fixture::{Dead, Fixture};

pub struct RedisFixture {
    server: Server,
    conn: MultiplexedConnection,
}

#[async_trait]
impl Fixture for RedisFixture {
    async fn start() -> Self {
        let server = Server::start().await;
        let conn = server.conn().await;
        Self { server, conn }
    }

    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource> {
        let mut cfg = self.server.config(worker);
        cfg.lease = lease;
        Arc::new(RedisSource::connect(cfg).await.expect("connect redis"))
    }

    async fn enqueue(&self, id: &str, ty: &str, payload: Value) {
        let payload = payload.to_string();
        let mut c = self.conn.clone();
        harness::enqueue(
            &mut c,
            &[("jobId", id), ("type", ty), ("payload", &payload)],
        )
        .await;
    }

    async fn enqueue_malformed(&self, id: &str) -> bool {
        let mut c = self.conn.clone();
        harness::enqueue(
            &mut c,
            &[("jobId", id), ("type", "echo"), ("payload", "{not json")],
        )
        .await;
        true
    }

    async fn cancel(&self, id: &str) {
        let mut c = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(format!("job:cancelled:{id}"))
            .arg(1)
            .query_async(&mut c)
            .await
            .unwrap();
    }

    async fn dead_letters(&self) -> Vec<Dead> {
        let mut c = self.conn.clone();
        harness::range(&mut c, "dlq:v1:gpu-general")
            .await
            .into_iter()
            .map(|(_, f)| Dead {
                job_id: harness::field(&f, "jobId").unwrap_or_default().to_string(),
                reason: harness::field(&f, "reason").unwrap_or_default().to_string(),
                attempts: harness::field(&f, "attempts").and_then(|a| a.parse().ok()),
            })
            .collect()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        let mut c = self.conn.clone();
        harness::range(&mut c, &format!("stream:v1:{id}:events"))
            .await
            .into_iter()
            .map(|(_, f)| serde_json::from_str(harness::field(&f, "event").unwrap()).unwrap())
            .collect()
    }
}
