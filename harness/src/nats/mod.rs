//! NATS for the tests: a throwaway `nats-server -js` ([`LocalNats`], in `local`: free loopback
//! port, temporary store, killed on drop; restartable on the same port and store) wrapped as a
//! test [`Server`] (panics instead of errors, sources with short test timings), and the producer's
//! side: job messages published exactly as the wire format says, and the events read back.

mod local;

use std::time::Duration;

use citadel_transports::nats::NatsProducer;
use citadel_transports::{Incoming, JobSource, NatsConfig, NatsSource, SettleContext};
use serde_json::{json, Value};

pub use local::LocalNats;

pub const SUBJECT: &str = "jobs.v1.gpu-general";

/// A throwaway nats-server with test conveniences.
#[derive(Debug)]
pub struct Server {
    nats: LocalNats,
}

impl Server {
    pub fn start() -> Self {
        let nats = LocalNats::start()
            .expect("nats-server must be installed (apt-get install -y nats-server)");
        Self { nats }
    }

    /// Kills the server; JetStream's store stays.
    pub fn stop(&mut self) {
        self.nats.stop();
    }

    /// Stops the server with SIGTERM: it writes its state to the store first.
    pub fn terminate(&mut self) {
        self.nats.terminate();
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.nats.restart().expect("restart nats-server");
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    /// The JetStream store directory (kept across `stop`/`restart`).
    pub fn store(&self) -> &std::path::Path {
        self.nats.store()
    }

    /// Settings for tests: a 2 s lease (ack_wait) and short pulls.
    pub fn config(&self, worker: &str) -> NatsConfig {
        let mut c = NatsConfig::new(self.url(), worker);
        c.lease = Duration::from_secs(2);
        c.block = Duration::from_millis(200);
        c.command_timeout = Duration::from_secs(2);
        c
    }

    pub async fn source(&self, worker: &str) -> NatsSource {
        NatsSource::connect(self.config(worker))
            .await
            .expect("connect the source")
    }

    pub async fn producer(&self) -> NatsProducer {
        NatsProducer::connect(&self.config("producer"))
            .await
            .expect("connect the producer")
    }
}

/// Publishes a job message with a JSON object payload; returns its stream sequence.
pub async fn enqueue_job(p: &NatsProducer, id: &str, ty: &str) -> u64 {
    p.enqueue(
        SUBJECT,
        &json!({"jobId": id, "type": ty, "payload": {"n": 1}}),
    )
    .await
    .expect("enqueue")
}

/// Calls `next(max)` until something comes or `within` passes.
pub async fn next_within<S: JobSource + ?Sized>(
    src: &S,
    max: usize,
    within: Duration,
) -> Vec<Incoming> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = src.next(max).await.expect("next");
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            return got;
        }
    }
}

/// Exactly one delivery within 5 s.
pub async fn one<S: JobSource + ?Sized>(src: &S) -> Incoming {
    let mut got = next_within(src, 1, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "expected one delivery");
    got.remove(0)
}

pub fn job(i: &Incoming) -> &citadel_transports::Job {
    match i {
        Incoming::Job(d) => &d.job,
        Incoming::Malformed(m) => panic!("expected a job, got {m:?}"),
    }
}

pub fn ctx() -> SettleContext<'static> {
    SettleContext {
        worker_id: "w-1".into(),
        ..Default::default()
    }
}

/// A server round trip on the producer's connection: a subscription made before it is in
/// place at the server once it returns (async-nats' `flush` only empties the client's buffer).
pub async fn round_trip(p: &NatsProducer) {
    p.jetstream()
        .get_stream(citadel_transports::nats::DEFAULT_STREAM)
        .await
        .expect("a JetStream round trip");
}

/// The `type` of each event.
pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap_or_default().to_string())
        .collect()
}
