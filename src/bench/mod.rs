//! `citadel bench`: measurements a user can run on their own node. Benchmarks report ratios and
//! rates from one run; nothing here asserts a timing.

pub mod engine;
mod journal;
mod llm;
mod nats;
mod nexus;
mod platform;
mod redis;
mod websocket;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The durable journal: appends/s with 1 and many concurrent writers (group commit), the
    /// same with durability off for comparison, and replay speed.
    Journal(journal::JournalBench),
    /// No-op jobs through Redis Streams: jobs/s at several concurrencies (journal durable and,
    /// for comparison, buffered) and enqueue → handler-start latency at a fixed offered load.
    Redis(redis::RedisBench),
    /// No-op jobs through the embedded control plane: jobs/s, and submit → start latency with
    /// long-poll and with plain 5 s polling.
    Nexus(nexus::NexusBench),
    /// Platform detection (GPU via NVML, the whole detection) and `/metrics` rendering costs.
    Platform(platform::PlatformBench),
    /// No-op jobs pushed by the embedded control plane over its WebSocket: jobs/s at several
    /// concurrencies and submit → start latency.
    #[command(name = "websocket")]
    WebSocket(websocket::WebSocketBench),
    /// LLM token relay through Redis: added latency per token (p50/p99) at a fixed token rate,
    /// the most tokens/s of one stream and of 64 concurrent streams.
    Llm(llm::LlmBench),
    /// No-op jobs through NATS JetStream: jobs/s at several concurrencies (journal durable and,
    /// for comparison, buffered) and publish → handler-start latency at a fixed offered load.
    Nats(nats::NatsBench),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Journal(args) => journal::run(args).await,
        BenchCommand::Redis(args) => redis::run(args).await,
        BenchCommand::Nexus(args) => nexus::run(args).await,
        BenchCommand::Platform(args) => platform::run(args).await,
        BenchCommand::WebSocket(args) => websocket::run(args).await,
        BenchCommand::Llm(args) => llm::run(args).await,
        BenchCommand::Nats(args) => nats::run(args).await,
    }
}

/// `noop` that records when each job's handler started, for dispatch latency.
#[derive(Debug, Default)]
pub(crate) struct TimedNoop {
    started: std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>,
}

#[async_trait::async_trait]
impl crate::handlers::Handler for TimedNoop {
    async fn run(
        &self,
        ctx: &crate::handlers::JobContext,
    ) -> Result<serde_json::Value, crate::handlers::HandlerError> {
        let now = std::time::Instant::now();
        self.started
            .lock()
            .expect("poisoned")
            .insert(ctx.job.id.to_string(), now);
        Ok(serde_json::json!({}))
    }
}

impl TimedNoop {
    /// Milliseconds from each job's enqueue instant to its handler's start, sorted; jobs that
    /// never started are left out.
    pub(crate) fn latencies_ms(&self, enqueued: &[(String, std::time::Instant)]) -> Vec<f64> {
        let started = self.started.lock().expect("poisoned");
        let mut ms: Vec<f64> = enqueued
            .iter()
            .filter_map(|(id, at)| {
                started
                    .get(id)
                    .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    }
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
