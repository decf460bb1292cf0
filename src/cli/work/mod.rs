//! `citadel work`: runs this node as a worker. Builds the effective settings (defaults < config
//! file < `CITADEL_*` environment < flags), opens the journal (refusing to start when another
//! worker holds the same data directory), serves the journal to `citadel journal`, connects the
//! transport (retrying with backoff while it is away), and runs the [`Runner`] until SIGTERM or
//! SIGINT; a second signal exits at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_journal::{Durability, Journal, JournalError, JournalOptions, RetentionPolicy};
use citadel_transports::{
    AutoSource, JobSource, NatsSource, NexusSource, RedisSource, TransportCandidate,
    WebSocketSource,
};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use crate::format;
use crate::format::redact;
use transport::{
    auto_config, connect_retrying, nats_config, nexus_config, redis_config, websocket_config,
};

mod transport;
use crate::config::{self, FileConfig};
use crate::handlers::{
    DeviceConfigHandler, DownloadPolicy, ExtractionPolicy, Registry, ShellPolicy,
};
use crate::runner::{Runner, RunnerConfig};
use crate::status::server::StatusListen;
use crate::status::NodeStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// The best healthy configured transport (redis > nexus), falling back when it fails and
    /// upgrading back when it recovers.
    Auto,
    /// Redis Streams consumer group (the production path).
    Redis,
    /// NATS JetStream durable pull consumer (`--nats-url`).
    Nats,
    /// HTTP polling of a Nexus control plane (`--nexus-url`), long-poll and leases when it is a
    /// citadel control plane.
    Nexus,
    /// Jobs pushed by a citadel control plane over one WebSocket (`--nexus-url` or `--ws-url`):
    /// for nodes behind proxies that allow one outbound HTTP(S) connection and nothing else.
    #[value(name = "websocket")]
    WebSocket,
}

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
    #[arg(long, value_enum, env = "CITADEL_TRANSPORT")]
    transport: Option<TransportKind>,
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
    /// Job subject(s) to consume, repeatable or comma separated (default jobs.v1.gpu-general).
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
    /// Job stream(s) to consume, repeatable or comma separated (default jobs:v1:gpu-general).
    #[arg(
        long = "stream",
        env = "CITADEL_STREAMS",
        value_delimiter = ',',
        value_name = "STREAM"
    )]
    streams: Vec<String>,
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

    let node_name = args
        .node_name
        .clone()
        .or(file.node.name.clone())
        .unwrap_or_else(crate::node::host_name);
    let instance = crate::node::instance_id(data_dir)?;
    let consumer = crate::node::consumer_name(&node_name, &instance);

    let journal_dir = crate::paths::journal_dir(data_dir);
    let options = JournalOptions {
        durability: match args.journal_durability {
            DurabilityArg::Durable => Durability::Durable,
            DurabilityArg::Buffered => Durability::Buffered,
        },
        recover: true,
    };
    let (journal, report) = match Journal::open(&journal_dir, options) {
        Ok(opened) => opened,
        Err(JournalError::Locked { .. }) => bail!(
            "another citadel worker is already running on the data directory {} (its journal is locked); \
             stop it first, or give this worker its own --data-dir",
            data_dir.display()
        ),
        Err(e) => return Err(e).context("opening the journal"),
    };
    if !report.interrupted.is_empty() {
        tracing::warn!(
            count = report.interrupted.len(),
            "jobs were running when the worker last stopped; marked interrupted"
        );
    }
    if !report.damaged.is_empty() {
        tracing::warn!(
            count = report.damaged.len(),
            "damaged journal entries were skipped (see `citadel journal stats`)"
        );
    }
    let retention = retention_policy(&args, &file)?;
    let retention_task = tokio::spawn(keep_journal_trim(journal.clone(), retention));
    let socket = citadel_journal::remote::serve(journal.clone())
        .await
        .context("serving the journal socket")?;

    let w = &file.worker;
    let mut runner_config = RunnerConfig::new(node_name.clone(), consumer.clone());
    runner_config.concurrency = args.concurrency.or(w.concurrency).unwrap_or(1).max(1);
    runner_config.drain_timeout = duration(
        "drain_timeout",
        args.drain_timeout.as_ref(),
        w.drain_timeout.as_ref(),
        runner_config.drain_timeout,
    )?;
    runner_config.default_timeout = duration(
        "default_timeout",
        args.default_timeout.as_ref(),
        w.default_timeout.as_ref(),
        runner_config.default_timeout,
    )?;
    runner_config.max_attempts = args
        .max_attempts
        .or(w.max_attempts)
        .unwrap_or(runner_config.max_attempts)
        .max(1);

    let shell = &file.permissions.shell;
    let shell_policy = ShellPolicy {
        enabled: args.enable_shell || shell.enabled.unwrap_or(false),
        allow: if args.shell_allow.is_empty() {
            shell.allow.clone().unwrap_or_default()
        } else {
            args.shell_allow.clone()
        },
        passcode: match &shell.passcode_env {
            Some(var) => Some(std::env::var(var).with_context(|| {
                format!("permissions.shell.passcode_env names `{var}`, which is not set")
            })?),
            None => std::env::var("CITADEL_SHELL_PASSCODE")
                .ok()
                .filter(|p| !p.is_empty()),
        },
        workspace: data_dir.join("workspace"),
        max_output: match &shell.max_output {
            Some(s) => usize::try_from(format::parse_size(s)?)?,
            None => ShellPolicy::default().max_output,
        },
    };
    if shell_policy.enabled {
        tracing::warn!(allowlist = ?shell_policy.allow, "shell_command is ENABLED: producers can run commands on this machine");
    }
    let models_dir = args
        .models_dir
        .clone()
        .or(w.models_dir.clone())
        .unwrap_or_else(|| data_dir.join("models"));
    let extraction = ExtractionPolicy {
        url: args
            .extraction_url
            .clone()
            .or(w.extraction_url.clone())
            .unwrap_or_else(|| crate::handlers::extraction::DEFAULT_URL.into()),
        ..ExtractionPolicy::default()
    };
    let mut registry = Registry::builtin(shell_policy)
        .with_node_handlers(DownloadPolicy::new(models_dir), extraction)
        .context("building the HTTP client of the handlers")?;
    registry.register(
        "APPLY_DEVICE_CONFIG",
        Arc::new(DeviceConfigHandler::new(
            config_path.clone(),
            data_dir.to_path_buf(),
        )),
    );
    registry.alias("apply_device_config", "APPLY_DEVICE_CONFIG");
    let llm = args.engines.config(&file.llm)?;
    registry.register(
        "llm_inference",
        Arc::new(crate::handlers::LlmHandler::new(llm)),
    );

    let redis_file = file.transports.redis.unwrap_or_default();
    let nexus_file = file.transports.nexus.unwrap_or_default();
    let auto_file = file.transports.auto;
    let ws_file = file.transports.websocket.unwrap_or_default();
    let nats_file = file.transports.nats.unwrap_or_default();
    let nexus_url = args.nexus_url.clone().or(nexus_file.url.clone());
    // `auto` is the default; with nothing configured at all it means the embedded control plane.
    // Best first: the order `auto` prefers them in.
    let configured: Vec<TransportKind> = [
        (
            TransportKind::Redis,
            args.redis_url.is_some() || redis_file.url.is_some(),
        ),
        (
            TransportKind::Nats,
            args.nats_url.is_some() || nats_file.url.is_some(),
        ),
        (
            TransportKind::WebSocket,
            args.ws_url.is_some() || ws_file.url.is_some(),
        ),
        (TransportKind::Nexus, nexus_url.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    let kind = match (args.transport, configured.as_slice()) {
        (Some(TransportKind::Auto) | None, []) => None,
        (Some(TransportKind::Auto) | None, [only]) => Some(*only),
        (None, _) => Some(TransportKind::Auto),
        (Some(k), _) => Some(k),
    };
    let lease_setting = duration(
        "lease",
        args.lease.as_ref(),
        redis_file.lease.as_ref(),
        Duration::from_secs(60),
    )?;
    runner_config.lease = lease_setting;
    let redis_url = args.redis_url.clone().or(redis_file.url.clone());
    let mut embedded = None;
    let source: Arc<dyn JobSource> = match kind {
        Some(TransportKind::Auto) => {
            let mut candidates = Vec::new();
            if redis_url.is_some() {
                let cfg = redis_config(&args, redis_file, &consumer, lease_setting)?;
                candidates.push(TransportCandidate::new("redis", move || {
                    let cfg = cfg.clone();
                    async move { Ok(Arc::new(RedisSource::connect(cfg).await?) as Arc<dyn JobSource>) }
                }));
            }
            if configured.contains(&TransportKind::Nats) {
                let cfg = nats_config(&args, nats_file, consumer.clone(), lease_setting)?;
                candidates.push(TransportCandidate::new("nats", move || {
                    let cfg = cfg.clone();
                    async move { Ok(Arc::new(NatsSource::connect(cfg).await?) as Arc<dyn JobSource>) }
                }));
            }
            if configured.contains(&TransportKind::WebSocket) {
                let cfg = websocket_config(
                    &args,
                    &ws_file,
                    &nexus_file,
                    nexus_url.as_deref(),
                    &consumer,
                    &node_name,
                    lease_setting,
                    data_dir,
                )?;
                candidates.push(TransportCandidate::new("websocket", move || {
                    let cfg = cfg.clone();
                    async move {
                        Ok(Arc::new(WebSocketSource::connect(cfg).await?) as Arc<dyn JobSource>)
                    }
                }));
            }
            if let Some(url) = nexus_url {
                let cfg = nexus_config(
                    &args,
                    &nexus_file,
                    url,
                    &consumer,
                    &node_name,
                    lease_setting,
                    data_dir,
                )?;
                candidates.push(TransportCandidate::new("nexus", move || {
                    let cfg = cfg.clone();
                    async move { Ok(Arc::new(NexusSource::connect(cfg).await?) as Arc<dyn JobSource>) }
                }));
            }
            let auto_cfg = auto_config(&args, auto_file.as_ref())?;
            eprintln!(
                "citadel {} working: node {node_name}, worker {consumer}, transport auto over {} (falls back within {}), concurrency {}",
                env!("CARGO_PKG_VERSION"),
                candidates.iter().map(|c| c.name()).collect::<Vec<_>>().join(" > "),
                humantime::format_duration(auto_cfg.detection_bound()),
                runner_config.concurrency
            );
            Arc::new(
                AutoSource::start(candidates, auto_cfg)
                    .await
                    .context("starting the auto transport")?,
            )
        }
        None | Some(TransportKind::Nexus) => {
            let url = match (kind, nexus_url) {
                (Some(_), Some(url)) => url,
                (Some(_), None) => bail!(
                    "--transport nexus needs --nexus-url (or CITADEL_NEXUS_URL, or transports.nexus.url)"
                ),
                (None, _) => {
                    let dir = crate::nexus::data_dir(data_dir);
                    let running = crate::nexus::start(
                        &dir,
                        crate::nexus::Listen::LoopbackFrom(crate::nexus::DEFAULT_PORT),
                    )
                    .await
                    .context("starting the embedded control plane")?;
                    eprintln!(
                        "citadel: no transport configured: serving an embedded control plane on {} (data in {})\n\
                         citadel: submit a job from another terminal:  citadel submit --wait echo msg=hi",
                        running.url,
                        dir.display()
                    );
                    let url = running.url.clone();
                    embedded = Some(running);
                    url
                }
            };
            let mut cfg = nexus_config(
                &args,
                &nexus_file,
                url,
                &consumer,
                &node_name,
                lease_setting,
                data_dir,
            )?;
            if let Some(plane) = &embedded {
                cfg.token = Some(plane.token.clone());
            }
            eprintln!(
                "citadel {} working: node {node_name}, worker {consumer}, nexus {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                cfg.url,
                runner_config.concurrency
            );
            Arc::new(
                connect_retrying("the control plane", || NexusSource::connect(cfg.clone())).await?,
            )
        }
        Some(TransportKind::WebSocket) => {
            let cfg = websocket_config(
                &args,
                &ws_file,
                &nexus_file,
                nexus_url.as_deref(),
                &consumer,
                &node_name,
                lease_setting,
                data_dir,
            )?;
            runner_config.lease = cfg.lease;
            eprintln!(
                "citadel {} working: node {node_name}, worker {consumer}, websocket {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                cfg.url,
                runner_config.concurrency
            );
            Arc::new(
                connect_retrying("the control plane WebSocket", || {
                    WebSocketSource::connect(cfg.clone())
                })
                .await?,
            )
        }
        Some(TransportKind::Redis) => {
            let cfg = redis_config(&args, redis_file, &consumer, lease_setting)?;
            eprintln!(
                "citadel {} working: node {node_name}, consumer {consumer}, redis {} streams {} group {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                redact(&cfg.url),
                cfg.streams.join(","),
                cfg.group,
                runner_config.concurrency
            );
            Arc::new(connect_retrying("redis", || RedisSource::connect(cfg.clone())).await?)
        }
        Some(TransportKind::Nats) => {
            let cfg = nats_config(&args, nats_file, consumer.clone(), lease_setting)?;
            runner_config.lease = cfg.lease;
            eprintln!(
                "citadel {} working: node {node_name}, worker {consumer}, nats {} stream {} subjects {} consumer {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                redact(&cfg.url),
                cfg.stream,
                cfg.subjects.join(","),
                cfg.consumer,
                runner_config.concurrency
            );
            Arc::new(connect_retrying("nats", || NatsSource::connect(cfg.clone())).await?)
        }
    };

    let status_listen: StatusListen = args
        .status_listen
        .as_ref()
        .or(w.status_listen.as_ref())
        .map_or(Ok(StatusListen::Auto), |s| s.parse())
        .context("setting `status_listen`")?;
    let heartbeat_every = duration(
        "heartbeat_interval",
        args.heartbeat_interval.as_ref(),
        w.heartbeat_interval.as_ref(),
        crate::status::heartbeat::DEFAULT_INTERVAL,
    )?;
    let identity = crate::status::Identity {
        node_id: runner_config.node_id.clone(),
        node_name: node_name.clone(),
        worker_id: consumer.clone(),
        concurrency: runner_config.concurrency,
        data_dir: data_dir.to_path_buf(),
        manifest: config_path.clone(),
    };

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), journal.clone())?;
    let runner = Runner::new(source.clone(), journal.clone(), registry, runner_config);
    let status = Arc::new(NodeStatus::new(identity, source, runner.counters()));
    let status_server = crate::status::server::start(status_listen, status.clone()).await?;
    if let Some(s) = &status_server {
        eprintln!(
            "citadel: status on http://{} (/status, /metrics, /healthz, /readyz)",
            s.addr
        );
    }
    let beats = CancellationToken::new();
    let heartbeat = tokio::spawn(crate::status::heartbeat::run(
        status,
        heartbeat_every,
        beats.clone(),
    ));
    let result = runner.run(shutdown).await;
    beats.cancel();
    let _ = heartbeat.await;
    if let Some(s) = status_server {
        s.stop().await;
    }
    socket.abort();
    retention_task.abort();
    journal.sync().await.context("flushing the journal")?;
    if let Some(plane) = embedded {
        plane
            .stop()
            .await
            .context("stopping the embedded control plane")?;
    }
    result
}

/// The journal's retention from the flags, environment and config file.
fn retention_policy(args: &WorkArgs, file: &FileConfig) -> anyhow::Result<RetentionPolicy> {
    let j = &file.worker.journal;
    let age = args.journal_retention.as_ref().or(j.retention.as_ref());
    let max_age = match age.map(String::as_str) {
        None => Some(DEFAULT_RETENTION),
        Some("0") => None,
        Some(a) => Some(format::parse_duration(a).context("setting `journal_retention`")?),
    };
    let size = args.journal_max_size.as_ref().or(j.max_size.as_ref());
    let max_bytes = size
        .map(|s| format::parse_size(s).context("setting `journal_max_size`"))
        .transpose()?;
    Ok(RetentionPolicy { max_age, max_bytes })
}

/// Settled jobs are kept this long by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Compacts the journal now and every hour; a failure is logged and tried again next time.
async fn keep_journal_trim(journal: Journal, policy: RetentionPolicy) {
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return;
    }
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let j = journal.clone();
        let p = policy.clone();
        match tokio::task::spawn_blocking(move || j.compact(&p)).await {
            Ok(Ok(r)) if r.jobs_removed + r.damaged_removed > 0 => {
                tracing::info!(
                    jobs = r.jobs_removed,
                    events = r.events_removed,
                    damaged = r.damaged_removed,
                    "journal retention removed settled jobs"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "journal retention failed; trying again in an hour")
            }
            Err(e) => tracing::warn!(error = %e, "journal retention task failed"),
        }
    }
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
