//! `citadel bench`: measurements a user can run on their own node. Benchmarks report ratios and
//! rates from one run; nothing here asserts a timing.

mod journal;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The durable journal: appends/s with 1 and many concurrent writers (group commit), the
    /// same with durability off for comparison, and replay speed.
    Journal(journal::JournalBench),
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Journal(args) => journal::run(args).await,
    }
}
