//! `citadel bench`: measurements a user can run on their own node. Benchmarks report ratios and
//! rates from one run; nothing here asserts a timing.

mod journal;
mod nexus;
mod redis;

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
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Journal(args) => journal::run(args).await,
        BenchCommand::Redis(args) => redis::run(args).await,
        BenchCommand::Nexus(args) => nexus::run(args).await,
    }
}
