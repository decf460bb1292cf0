//! The command line: one clap tree, one `run` that dispatches. Commands live in their own modules;
//! this module owns only the shared flags (data directory, logging) and the dispatch.

mod format;
pub use format::table;
mod jobs;
mod journal;
mod nexus;
mod remote;
mod submit;
mod work;

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// citadel: turn this machine into a durable, effectively-once worker for AI jobs.
#[derive(Debug, Parser)]
#[command(name = "citadel", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where citadel keeps its state (journal, identity). Default: ~/.local/share/citadel.
    #[arg(long, global = true, env = "CITADEL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Log filter, e.g. `info`, `debug`, `citadel=trace`.
    #[arg(
        long,
        global = true,
        env = "CITADEL_LOG",
        default_value = "warn",
        value_name = "FILTER"
    )]
    pub log: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this node as a worker: take jobs from the transport, journal, run, settle.
    Work(Box<work::WorkArgs>),
    /// Inspect the job journal: what every job went through, on this node.
    Journal(journal::JournalArgs),
    /// Measure this node (`citadel bench journal`: the cost of the durable journal).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// The embedded control plane (`citadel nexus serve`).
    #[command(subcommand)]
    Nexus(nexus::NexusCommand),
    /// Enqueue a job (on the local control plane, a Nexus URL or Redis); `--wait` streams it.
    Submit(submit::SubmitArgs),
    /// The jobs of a control plane: ls, show, cancel, dlq, requeue.
    Jobs(jobs::JobsArgs),
}

/// Parses the process arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        .init();
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(crate::paths::default_data_dir);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Work(args) => work::run(*args, &data_dir).await,
            Command::Journal(args) => journal::run(args, &data_dir).await,
            Command::Bench(cmd) => crate::bench::run(cmd).await,
            Command::Nexus(cmd) => nexus::run(cmd, &data_dir).await,
            Command::Submit(args) => submit::run(args, &data_dir).await,
            Command::Jobs(args) => jobs::run(args, &data_dir).await,
        }
    })
}
