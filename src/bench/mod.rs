//! `citadel bench`: measurements a user can run on their own node. Benchmarks report ratios and
//! rates from one run; nothing here asserts a timing.

mod jobs;
mod journal;
mod llm;
mod mesh;
mod platform;
mod terminal;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The durable journal: appends/s with 1 and many concurrent writers (group commit), the
    /// same with durability off for comparison, and replay speed.
    Journal(journal::JournalBench),
    /// Jobs through Redis Streams into a worker in this process: jobs/s at each concurrency
    /// (journal durable, then buffered for its share of the cost), CPU and peak RSS, and
    /// enqueue → start / enqueue → done latency percentiles at a fixed offered load.
    Redis(jobs::RedisBench),
    /// The same through NATS JetStream.
    Nats(jobs::NatsBench),
    /// The same through the embedded control plane (long-poll claims, or `--plain` polling).
    Nexus(jobs::NexusBench),
    /// The same through the embedded control plane's WebSocket job push.
    #[command(name = "websocket")]
    WebSocket(jobs::WebSocketBench),
    /// Platform detection (GPU via NVML, the whole detection) and `/metrics` rendering costs.
    Platform(platform::PlatformBench),
    /// LLM token relay through Redis: added latency per token (p50/p99) at a fixed token rate,
    /// the most tokens/s of one stream and of 64 concurrent streams.
    Llm(llm::LlmBench),
    /// The terminal service over loopback: keystroke round trip (input frame → echoed output
    /// frame) p50/p99 and output throughput in MB/s.
    Terminal(terminal::TerminalBench),
    /// The mesh between two nodes through a control plane's relay in this process: TCP
    /// throughput (MB/s) and round trips beside plain loopback TCP in the same run.
    Mesh(mesh::MeshBench),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Journal(args) => journal::run(args).await,
        BenchCommand::Redis(args) => jobs::targets::redis::run(args).await,
        BenchCommand::Nats(args) => jobs::targets::nats::run(args).await,
        BenchCommand::Nexus(args) => jobs::targets::nexus::run_nexus(args).await,
        BenchCommand::WebSocket(args) => jobs::targets::nexus::run_websocket(args).await,
        BenchCommand::Platform(args) => platform::run(args).await,
        BenchCommand::Llm(args) => llm::run(args).await,
        BenchCommand::Terminal(args) => terminal::run(args).await,
        BenchCommand::Mesh(args) => mesh::run(args).await,
    }
}

/// The `p` quantile (0..=1) of sorted samples (nearest rank).
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}
