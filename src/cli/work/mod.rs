//! `citadel work`: runs this node as a worker, in this order: resolve the settings once
//! ([`settings`]: defaults < config file < `CITADEL_*` environment < flags), open the journal
//! (refusing to start when another worker holds the same data directory) and keep it trimmed
//! ([`journal`]), serve it to `citadel journal`, build the job handlers ([`handlers`]), connect
//! the transport(s) of the registry ([`transport`], retrying with backoff while they are away),
//! start the terminal service when the manifest enables the console ([`terminal`]), join the
//! mesh when it is enabled ([`mesh`]: the terminal and the status server also on the node's mesh
//! address), then run the [`Runner`] with the status server and heartbeat until SIGTERM or SIGINT (a second signal exits
//! at once); everything stops in the reverse order. This module owns that order and
//! the flags; it must never run a job itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use citadel_journal::Journal;
use citadel_transports::JobSource;
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

mod handlers;
mod journal;
pub(crate) mod mesh;
mod routing;
mod settings;
mod terminal;
mod transport;

use crate::config::{self, FileConfig};
use crate::format;
use crate::handlers::Registry;
use crate::runner::Runner;
use crate::status::NodeStatus;
use settings::Settings;
use transport::{Plan, TransportChoice};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Every settlement waits for its journal entry to be on disk (the only safe choice).
    Durable,
    /// Benchmarks only: measure what durability costs. Loses recent journal entries on a crash.
    Buffered,
}

#[derive(Debug, Args)]
pub struct WorkArgs {
    /// The transport to take jobs from. Default `auto`: the best healthy configured transport
    /// (redis > nats > websocket > nexus), or, with none configured, an embedded control plane on
    /// loopback.
    #[arg(long, env = "CITADEL_TRANSPORT", value_parser = transport::transport_parser())]
    transport: Option<TransportChoice>,
    /// The Nexus control plane (http://host:port).
    #[arg(long, env = "CITADEL_NEXUS_URL", value_name = "URL")]
    nexus_url: Option<String>,
    /// The control plane's WebSocket job push (ws://host:port/api/v1/ws or wss://...) for
    /// `--transport websocket`. Default: derived from --nexus-url (http → ws, https → wss).
    #[arg(long, env = "CITADEL_WS_URL", value_name = "URL")]
    ws_url: Option<String>,
    /// The control plane's bearer token (default: the token file of the local control plane,
    /// DATA_DIR/nexus/token, or `transports.nexus.token_file`).
    #[arg(
        long,
        env = "CITADEL_NEXUS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    nexus_token: Option<String>,
    /// auto: how long the active transport may fail before the next one takes over (default 3s).
    #[arg(long, env = "CITADEL_FALLBACK_AFTER", value_name = "DURATION")]
    fallback_after: Option<String>,
    /// auto: how long a better transport must be healthy again before it takes over (default 5s).
    #[arg(long, env = "CITADEL_UPGRADE_AFTER", value_name = "DURATION")]
    upgrade_after: Option<String>,
    /// auto: how often every transport's health is probed (default 1s).
    #[arg(long, env = "CITADEL_PROBE_INTERVAL", value_name = "DURATION")]
    probe_interval: Option<String>,
    /// Config file (YAML; see the README). Default: DATA_DIR/citadel.yaml when it exists.
    #[arg(long, env = "CITADEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// This node's name (default: the host name). Jobs with `target_node` set to another name
    /// are skipped.
    #[arg(long, env = "CITADEL_NODE_NAME", value_name = "NAME")]
    node_name: Option<String>,
    /// Jobs run at once (default 1).
    #[arg(long, short = 'c', env = "CITADEL_CONCURRENCY", value_name = "N")]
    concurrency: Option<usize>,
    /// How long running jobs get to finish after SIGTERM (default 30s).
    #[arg(long, env = "CITADEL_DRAIN_TIMEOUT", value_name = "DURATION")]
    drain_timeout: Option<String>,
    /// The deadline of a job without `timeout_ms` in its payload (default 1h).
    #[arg(long, env = "CITADEL_DEFAULT_TIMEOUT", value_name = "DURATION")]
    default_timeout: Option<String>,
    /// Attempts before a failing job goes to the dead-letter queue (default 3; the payload's
    /// `maxAttempts` wins).
    #[arg(long, env = "CITADEL_MAX_ATTEMPTS", value_name = "N")]
    max_attempts: Option<u32>,
    /// Redis URL (default redis://127.0.0.1:6379).
    #[arg(long, env = "CITADEL_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// NATS server(s), e.g. nats://127.0.0.1:4222 (comma separated for a cluster).
    #[arg(long, env = "CITADEL_NATS_URL", value_name = "URL")]
    nats_url: Option<String>,
    /// The JetStream stream holding the job subjects (default JOBS; created with subjects
    /// jobs.v1.> and work-queue retention when missing).
    #[arg(long, env = "CITADEL_NATS_STREAM", value_name = "STREAM")]
    nats_stream: Option<String>,
    /// Job subject(s) to consume, repeatable or comma separated (default: derived from the
    /// node's capabilities, see docs/transports.md#routing).
    #[arg(
        long = "nats-subject",
        env = "CITADEL_NATS_SUBJECTS",
        value_delimiter = ',',
        value_name = "SUBJECT"
    )]
    nats_subjects: Vec<String>,
    /// The durable pull consumer shared by the fleet (default `workers`; with several subjects,
    /// one durable per subject: `workers-jobs_v1_…`).
    #[arg(long, env = "CITADEL_NATS_CONSUMER", value_name = "NAME")]
    nats_consumer: Option<String>,
    /// A NATS credentials file (.creds: JWT and NKey seed).
    #[arg(long, env = "CITADEL_NATS_CREDENTIALS", value_name = "FILE")]
    nats_credentials: Option<PathBuf>,
    /// Job stream(s) to consume, repeatable or comma separated (default: derived from the
    /// node's capabilities, see --routing-base).
    #[arg(
        long = "stream",
        env = "CITADEL_STREAMS",
        value_delimiter = ',',
        value_name = "STREAM"
    )]
    streams: Vec<String>,
    /// The general stream(s) a node with derived streams reads: gpu (jobs:v1:gpu-general, the
    /// default), cpu (jobs:v1:cpu-general), auto (cpu-general without a GPU) or both.
    #[arg(long, env = "CITADEL_ROUTING_BASE", value_name = "gpu|cpu|auto|both")]
    routing_base: Option<String>,
    /// The organization this node belongs to: it also reads its organization's stream, and its
    /// own stream is named within it.
    #[arg(long, env = "CITADEL_ORG", value_name = "ORG")]
    org: Option<String>,
    /// How often engines and their models are probed again to update the derived streams
    /// (default 5s).
    #[arg(long, env = "CITADEL_ROUTING_PROBE_INTERVAL", value_name = "DURATION")]
    routing_probe_interval: Option<String>,
    /// Consumer group (default `workers`; the Go fleet uses `citadel-workers`: every worker of a
    /// fleet must use the same group or it receives every job a second time).
    #[arg(long, env = "CITADEL_GROUP", value_name = "GROUP")]
    group: Option<String>,
    /// A job whose lease is not renewed for this long goes to another worker (default 60s).
    #[arg(long, env = "CITADEL_LEASE", value_name = "DURATION")]
    lease: Option<String>,
    /// Entries with a larger payload are dead-lettered as malformed (default 16MiB).
    #[arg(long, env = "CITADEL_MAX_PAYLOAD", value_name = "SIZE")]
    max_payload: Option<String>,
    #[command(flatten)]
    limits: settings::LimitArgs,
    /// Enable `shell_command` jobs (remote code execution: off by default).
    #[arg(long, env = "CITADEL_ENABLE_SHELL")]
    enable_shell: bool,
    /// Only these programs may run as `shell_command` (repeatable or comma separated).
    #[arg(
        long = "shell-allow",
        env = "CITADEL_SHELL_ALLOW",
        value_delimiter = ',',
        value_name = "PROGRAM"
    )]
    shell_allow: Vec<String>,
    /// Settled jobs are removed from the journal once their last event is this old (checked at
    /// start and hourly; `0` keeps everything; default 7d). Jobs still owed a settlement never go.
    #[arg(long, env = "CITADEL_JOURNAL_RETENTION", value_name = "AGE")]
    journal_retention: Option<String>,
    /// Also remove the oldest settled jobs while the journal's events take more than this.
    #[arg(long, env = "CITADEL_JOURNAL_MAX_SIZE", value_name = "SIZE")]
    journal_max_size: Option<String>,
    /// Where `model_download` jobs put their files (default DATA_DIR/models).
    #[arg(long, env = "CITADEL_MODELS_DIR", value_name = "DIR")]
    models_dir: Option<PathBuf>,
    /// The extraction (GLiNER) service `extraction` jobs go to
    /// (default http://127.0.0.1:8000/gliner).
    #[arg(long, env = "CITADEL_EXTRACTION_URL", value_name = "URL")]
    extraction_url: Option<String>,
    /// Where the status server (/healthz, /readyz, /status, /metrics) listens: HOST:PORT,
    /// `auto` (127.0.0.1:7412 or the next free port; the default) or `off`. The address goes to
    /// DATA_DIR/status.addr for `citadel status`.
    #[arg(long, env = "CITADEL_STATUS_LISTEN", value_name = "ADDR|auto|off")]
    status_listen: Option<String>,
    /// Where the terminal service listens when `permissions.console.enabled` is true
    /// (default 127.0.0.1:7860).
    #[arg(long, env = "CITADEL_TERMINAL_LISTEN", value_name = "ADDR")]
    terminal_listen: Option<String>,
    /// Join this organization's mesh: serve the terminal and the status server on the node's
    /// mesh address too, and reach peers by name (default: on once the node is enrolled with a
    /// control plane; docs/mesh.md#running-it).
    #[arg(
        long,
        env = "CITADEL_MESH_ENABLED",
        value_name = "BOOL",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    mesh: Option<bool>,
    /// Do not join the mesh (wins over --mesh and CITADEL_MESH_ENABLED).
    #[arg(long)]
    no_mesh: bool,
    /// How often the node's status message goes to the transport (default 30s).
    #[arg(long, env = "CITADEL_HEARTBEAT_INTERVAL", value_name = "DURATION")]
    heartbeat_interval: Option<String>,
    /// Journal durability (`buffered` is for benchmarks only).
    #[arg(
        long,
        value_enum,
        env = "CITADEL_JOURNAL_DURABILITY",
        default_value = "durable",
        hide = true
    )]
    journal_durability: DurabilityArg,
    #[command(flatten)]
    engines: Box<super::engines::EngineArgs>,
}

impl WorkArgs {
    /// `--config`/`CITADEL_CONFIG`, when given.
    pub(super) fn config_path(&self) -> Option<&Path> {
        self.config.as_deref()
    }
}

/// Parses an optional duration from a flag or the file, naming the setting when it is wrong.
fn duration(
    name: &str,
    flag: Option<&String>,
    file: Option<&String>,
    default: Duration,
) -> anyhow::Result<Duration> {
    match flag.or(file) {
        Some(v) => format::parse_duration(v).with_context(|| format!("setting `{name}`")),
        None => Ok(default),
    }
}

pub async fn run(args: WorkArgs, data_dir: &Path) -> anyhow::Result<()> {
    let (config_path, required) = config::config_path(args.config.as_deref(), data_dir);
    let file = FileConfig::load(&config_path, required)?;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let settings = Settings::resolve(&args, &file, data_dir)?;

    let journal = journal::open(data_dir, args.journal_durability)?;
    let retention = tokio::spawn(journal::keep_trimmed(
        journal.clone(),
        settings.retention.clone(),
    ));
    let socket = citadel_journal::remote::serve(journal.clone())
        .await
        .context("serving the journal socket")?;
    let handlers = handlers::registry(&args, &file, &config_path, data_dir)?;
    let live = match transport::derives_streams(&args, &file) {
        true => {
            let llm = args.engines.config(&file.llm)?;
            let routing = routing::Settings::resolve(&args, &file, &settings.node_name, &llm)?;
            Some(routing::start(routing).await)
        }
        false => None,
    };
    let feed = live.as_ref().map(|l| l.feed.clone());
    let (source, embedded) = connect(&args, &file, &settings, data_dir, feed).await?;
    let local_plane = embedded.as_ref().map(|p| terminal::Plane {
        url: p.url.clone(),
        credential: p.token.clone(),
    });
    let console = terminal::start(&args, &file, data_dir, local_plane).await?;
    let mesh = mesh::start(&args, &file, data_dir)?;
    if let (Some(m), Some(c)) = (&mesh, &console) {
        m.node.add_service(c.port(), c.handle());
    }

    let result = work(
        settings,
        source,
        live.as_ref().map(|l| l.state.clone()),
        journal.clone(),
        handlers,
        &config_path,
        data_dir,
        mesh.as_ref().map(|m| m.node.clone()),
        console.as_ref().map(|c| c.port()),
    )
    .await;

    if let Some(m) = mesh {
        m.stop().await;
    }
    if let Some(console) = console {
        console.stop().await;
    }
    socket.abort();
    retention.abort();
    if let Some(l) = &live {
        l.task.abort();
    }
    fail_stop_exit(&journal, &result);
    journal.sync().await.context("flushing the journal")?;
    if let Some(plane) = embedded {
        plane
            .stop()
            .await
            .context("stopping the embedded control plane")?;
    }
    result
}

/// The transport(s) of `--transport`, connected, after their start-up line; with none
/// configured, an embedded control plane (returned, to be stopped last).
async fn connect(
    args: &WorkArgs,
    file: &FileConfig,
    settings: &Settings,
    data_dir: &Path,
    routes: Option<citadel_transports::routing::RouteFeed>,
) -> anyhow::Result<(Arc<dyn JobSource>, Option<citadel_nexus::Running>)> {
    let who = transport::Identity {
        node_name: &settings.node_name,
        consumer: &settings.consumer,
        lease: settings.runner.lease,
        data_dir,
        routes,
    };
    let concurrency = settings.runner.concurrency;
    let (cfg, embedded) = match transport::plan(args, file, &who)? {
        Plan::Auto(configs, auto) => {
            let source =
                transport::start_auto(configs, auto, who.node_name, who.consumer, concurrency)
                    .await?;
            return Ok((source, None));
        }
        Plan::Only(cfg) => (*cfg, None),
        Plan::Embedded => {
            let plane = start_embedded(data_dir).await?;
            let cfg = transport::embedded_config(
                args,
                file,
                plane.url.clone(),
                plane.token.clone(),
                &who,
            )?;
            (cfg, Some(plane))
        }
    };
    transport::announce(&cfg, who.node_name, who.consumer, concurrency);
    Ok((transport::connect_one(&cfg).await?, embedded))
}

/// Serves an embedded control plane on loopback, and says how to use it.
async fn start_embedded(data_dir: &Path) -> anyhow::Result<citadel_nexus::Running> {
    let dir = citadel_nexus::data_dir(data_dir);
    let running = citadel_nexus::start(
        &dir,
        citadel_nexus::Listen::LoopbackFrom(citadel_nexus::DEFAULT_PORT),
    )
    .await
    .context("starting the embedded control plane")?;
    eprintln!(
        "citadel: no transport configured: serving an embedded control plane on {} (data in {})\n\
         citadel: submit a job from another terminal:  citadel submit --wait echo msg=hi",
        running.url,
        dir.display()
    );
    Ok(running)
}

/// Runs the worker until a signal: the runner, then the status server (also on the mesh, when
/// it runs) and the heartbeat around it; stops them in the reverse order.
#[allow(clippy::too_many_arguments)]
async fn work(
    settings: Settings,
    source: Arc<dyn JobSource>,
    routing: Option<crate::status::SharedRouting>,
    journal: Journal,
    handlers: Registry,
    config_path: &Path,
    data_dir: &Path,
    mesh: Option<Arc<mesh::MeshNode>>,
    terminal_port: Option<u16>,
) -> anyhow::Result<()> {
    let identity = crate::status::Identity {
        node_id: settings.runner.node_id.clone(),
        node_name: settings.node_name.clone(),
        worker_id: settings.consumer.clone(),
        concurrency: settings.runner.concurrency,
        data_dir: data_dir.to_path_buf(),
        manifest: config_path.to_path_buf(),
        terminal_port,
    };
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), journal.clone())?;
    let runner = Runner::new(source.clone(), journal, handlers, settings.runner);
    let status =
        Arc::new(NodeStatus::new(identity, source, runner.counters()).with_routing(routing));
    let control = mesh
        .clone()
        .map(|m| m as Arc<dyn crate::status::mesh::MeshControl>);
    let status_server =
        crate::status::server::start(settings.status_listen, status.clone(), control).await?;
    if let Some(s) = &status_server {
        eprintln!(
            "citadel: status on http://{} (/status, /metrics, /healthz, /readyz)",
            s.addr
        );
        if let Some(m) = &mesh {
            m.add_service(s.addr.port(), s.handle());
        }
    }
    let beats = CancellationToken::new();
    let heartbeat = tokio::spawn(crate::status::heartbeat::run(
        status,
        settings.heartbeat_every,
        beats.clone(),
    ));
    let result = runner.run(shutdown).await;
    beats.cancel();
    let _ = heartbeat.await;
    if let Some(s) = status_server {
        s.stop().await;
    }
    result
}

/// Fail-stop: after a failed journal write the runner has drained and returns its error; exit at
/// once with it. Dropping the store is not an option: sled 0.34 flushes when its last handle
/// drops and waits forever for a log write that failed.
fn fail_stop_exit(journal: &Journal, result: &anyhow::Result<()>) {
    if journal.failure().is_none() {
        return;
    }
    match result {
        Err(e) => eprintln!("error: {e:#}"),
        Ok(()) => eprintln!(
            "error: the journal at {} cannot be written",
            journal.path().display()
        ),
    }
    std::process::exit(1);
}

/// First SIGTERM/SIGINT: drain. Second: flush what the journal has and exit at once.
fn spawn_signal_handler(shutdown: CancellationToken, journal: Journal) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::spawn(async move {
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("citadel: shutting down: finishing running jobs (send the signal again to exit at once)");
        shutdown.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("citadel: second signal: exiting now; unfinished jobs will be delivered again");
        let _ = journal.close();
        std::process::exit(130);
    });
    Ok(())
}
