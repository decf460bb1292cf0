//! The NATS JetStream transport under the conformance suite: a real `nats-server -js`, job
//! messages published as the wire format says, the cancel bucket, the `DLQ` stream and the capped
//! `EVENTS` stream (through the library's producer).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use citadel_harness::nats::{Server, SUBJECT};
use citadel_transports::nats::NatsProducer;
use citadel_transports::{JobId, JobSource, NatsSource};
use serde_json::{json, Value};

use super::fixture::{Dead, Fixture};

pub struct NatsFixture {
    server: Server,
    producer: NatsProducer,
}

#[async_trait]
impl Fixture for NatsFixture {
    async fn start() -> Self {
        let server = Server::start();
        let producer = server.producer().await;
        Self { server, producer }
    }

    async fn source(&self, worker: &str, lease: Duration) -> Arc<dyn JobSource> {
        let mut cfg = self.server.config(worker);
        cfg.lease = lease;
        Arc::new(NatsSource::connect(cfg).await.expect("connect nats"))
    }

    async fn enqueue(&self, id: &str, ty: &str, payload: Value) {
        self.producer
            .enqueue(
                SUBJECT,
                &json!({"jobId": id, "type": ty, "payload": payload}),
            )
            .await
            .expect("enqueue");
    }

    async fn enqueue_malformed(&self, id: &str) -> bool {
        self.producer
            .enqueue(
                SUBJECT,
                &json!({"jobId": id, "type": "echo", "payload": "{not json"}),
            )
            .await
            .expect("enqueue");
        true
    }

    async fn cancel(&self, id: &str) {
        self.producer
            .cancel(&JobId::new(id).unwrap())
            .await
            .expect("cancel");
    }

    async fn dead_letters(&self) -> Vec<Dead> {
        self.producer
            .dead_letters(SUBJECT)
            .await
            .expect("dead letters")
            .into_iter()
            .map(|d| Dead {
                job_id: d["jobId"].as_str().unwrap_or_default().to_string(),
                reason: d["reason"].as_str().unwrap_or_default().to_string(),
                attempts: d["attempts"].as_u64().map(|a| a as u32),
            })
            .collect()
    }

    async fn events(&self, id: &str) -> Vec<Value> {
        self.producer
            .events(&JobId::new(id).unwrap())
            .await
            .expect("events")
    }
}
