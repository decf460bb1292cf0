//! The command line: one clap tree, one `run` that dispatches. Commands live in their own modules;
//! this module owns only the shared flags (data directory, logging) and the dispatch.

mod console;
mod engines;
mod init;
mod jobs;
mod journal;
mod mesh;
mod nexus;
mod nodes;
pub(crate) mod remote;
mod services;
mod settings;
mod status;
mod submit;
mod terminal;
pub(crate) mod work;

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

// Parsed once per process: the size of the largest variant (`work`'s many flags) does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run this node as a worker: take jobs from the transport, journal, run, settle.
    Work(Box<work::WorkArgs>),
    /// Inspect the job journal: what every job went through, on this node.
    Journal(journal::JournalArgs),
    /// Measure this node: the journal, each transport (redis, nats, websocket, nexus), LLM token
    /// relay, platform detection.
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// The embedded control plane (`citadel nexus serve`).
    #[command(subcommand)]
    Nexus(nexus::NexusCommand),
    /// Enqueue a job (on the local control plane, a Nexus URL, Redis or NATS); `--wait` streams it.
    Submit(submit::SubmitArgs),
    /// The jobs of a control plane: ls, show, cancel, dlq, requeue.
    Jobs(jobs::JobsArgs),
    /// The nodes approved on a control plane, their organizations and credentials: ls, revoke.
    Nodes(nodes::NodesArgs),
    /// Enrol this node: device authorization with a control plane (or `--offline`), then write
    /// the manifest and the node's credentials.
    Init(init::InitArgs),
    /// Converge the machine to the manifest (start its services, wait until they are ready),
    /// then work (takes every `citadel work` flag).
    Up(services::UpArgs),
    /// Stop the manifest's services (or the ones named); their caches are kept.
    Down(services::DownArgs),
    /// The services of the manifest and their state (`citadel services ls`).
    #[command(subcommand)]
    Services(services::ServicesCommand),
    /// A service's logs (`-f` to follow).
    Logs(services::LogsArgs),
    /// The effective configuration and where each value came from (`citadel config show`).
    #[command(subcommand)]
    Config(settings::ConfigCommand),
    /// The running worker's status: transport, jobs, GPUs, tags (from its status server).
    Status(status::StatusArgs),
    /// What this machine is: GPUs (NVML), OS, CPU, memory, disk, Docker, tags, as JSON.
    Platform(status::PlatformArgs),
    /// Open a node's terminal here (`citadel terminal HOST:PORT --token T`), or manage the
    /// terminal tokens of a control plane (`citadel terminal tokens create | ls | revoke`).
    Terminal(terminal::TerminalArgs),
    /// The web console's read-only tokens on a control plane (`citadel console tokens create |
    /// ls | revoke`).
    Console(console::ConsoleArgs),
    /// This node's mesh: `citadel mesh status` (address, peers, path, bytes, handshakes) and
    /// `citadel mesh ping NODE` (round trips through the tunnel), from the running worker.
    Mesh(mesh::MeshArgs),
}

/// Parses the process arguments and runs the command.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.log).context("invalid --log filter")?,
        )
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a journald pipe gets plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            Command::Nodes(args) => nodes::run(args, &data_dir).await,
            Command::Init(args) => init::run(args, &data_dir).await,
            Command::Up(args) => services::up(args, &data_dir).await,
            Command::Down(args) => services::down(args, &data_dir).await,
            Command::Services(cmd) => services::services(cmd, &data_dir).await,
            Command::Logs(args) => services::logs(args, &data_dir).await,
            Command::Config(cmd) => settings::run(cmd, &data_dir),
            Command::Status(args) => status::status(args, &data_dir).await,
            Command::Platform(args) => status::platform(args, &data_dir).await,
            Command::Terminal(args) => terminal::run(args, &data_dir).await,
            Command::Console(args) => console::run(args, &data_dir).await,
            Command::Mesh(args) => mesh::run(args, &data_dir).await,
        }
    })
}
