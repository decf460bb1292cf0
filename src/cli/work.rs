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
    Backoff, JobSource, NatsConfig, NatsSource, NexusConfig, NexusSource, RedisConfig, RedisSource,
};
use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::format;
use crate::config::{self, FileConfig};
use crate::handlers::{Registry, ShellPolicy};
use crate::runner::{Runner, RunnerConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportKind {
    /// Redis Streams consumer group (the production path).
    Redis,
    /// NATS JetStream durable pull consumer (`--nats-url`).
    Nats,
    /// HTTP polling of a Nexus control plane (`--nexus-url`), long-poll and leases when it is a
    /// citadel control plane.
    Nexus,
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
    /// The transport to take jobs from. Default: redis when a Redis URL is configured, else nats
    /// when a NATS URL is, else nexus when a Nexus URL is, else an embedded control plane on
    /// loopback.
    #[arg(long, value_enum, env = "CITADEL_TRANSPORT")]
    transport: Option<TransportKind>,
    /// The Nexus control plane (http://host:port).
    #[arg(long, env = "CITADEL_NEXUS_URL", value_name = "URL")]
    nexus_url: Option<String>,
    /// The control plane's bearer token (default: the token file of the local control plane,
    /// DATA_DIR/nexus/token, or `transports.nexus.token_file`).
    #[arg(
        long,
        env = "CITADEL_NEXUS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    nexus_token: Option<String>,
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
    /// Journal durability (`buffered` is for benchmarks only).
    #[arg(
        long,
        value_enum,
        env = "CITADEL_JOURNAL_DURABILITY",
        default_value = "durable",
        hide = true
    )]
    journal_durability: DurabilityArg,
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
    let registry = Registry::builtin(shell_policy);

    let redis_file = file.transports.redis.unwrap_or_default();
    let nexus_file = file.transports.nexus.unwrap_or_default();
    let nats_file = file.transports.nats.unwrap_or_default();
    let nexus_url = args.nexus_url.clone().or(nexus_file.url.clone());
    let kind = match args.transport {
        Some(k) => Some(k),
        None if args.redis_url.is_some() || redis_file.url.is_some() => Some(TransportKind::Redis),
        None if args.nats_url.is_some() || nats_file.url.is_some() => Some(TransportKind::Nats),
        None if nexus_url.is_some() => Some(TransportKind::Nexus),
        None => None,
    };
    let lease_setting = duration(
        "lease",
        args.lease.as_ref(),
        redis_file.lease.as_ref(),
        Duration::from_secs(60),
    )?;
    let mut embedded = None;
    let source: Arc<dyn JobSource> = match kind {
        None | Some(TransportKind::Nexus) => {
            let (url, token) = match (kind, nexus_url) {
                (Some(_), Some(url)) => {
                    let token = match args.nexus_token.clone() {
                        Some(t) => Some(t),
                        None => nexus_token_from_files(nexus_file.token_file.as_deref(), data_dir)?,
                    };
                    (url, token)
                }
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
                    let pair = (running.url.clone(), Some(running.token.clone()));
                    embedded = Some(running);
                    pair
                }
            };
            let mut cfg = NexusConfig::new(url, consumer.clone());
            cfg.token = token;
            cfg.node_name = node_name.clone();
            cfg.lease = lease_setting;
            runner_config.lease = cfg.lease;
            eprintln!(
                "citadel {} working: node {node_name}, worker {consumer}, nexus {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                cfg.url,
                runner_config.concurrency
            );
            Arc::new(connect_nexus(cfg).await?)
        }
        Some(TransportKind::Redis) => {
            let r = redis_file;
            let url = args
                .redis_url
                .clone()
                .or(r.url)
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
            let mut cfg = RedisConfig::new(url, consumer.clone());
            if !args.streams.is_empty() {
                cfg.streams = args.streams.clone();
            } else if let Some(s) = r.streams {
                cfg.streams = s;
            }
            if let Some(g) = args.group.clone().or(r.group) {
                cfg.group = g;
            }
            cfg.lease = lease_setting;
            if let Some(s) = args.max_payload.as_ref().or(r.max_payload.as_ref()) {
                cfg.max_payload_bytes =
                    usize::try_from(format::parse_size(s).context("setting `max_payload`")?)?;
            }
            runner_config.lease = cfg.lease;
            eprintln!(
                "citadel {} working: node {node_name}, consumer {consumer}, redis {} streams {} group {}, concurrency {}",
                env!("CARGO_PKG_VERSION"),
                redact(&cfg.url),
                cfg.streams.join(","),
                cfg.group,
                runner_config.concurrency
            );
            Arc::new(connect_redis(cfg).await?)
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
            Arc::new(connect_nats(cfg).await?)
        }
    };

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone(), journal.clone())?;
    let runner = Runner::new(source, journal.clone(), registry, runner_config);
    let result = runner.run(shutdown).await;
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

/// Connects, retrying with backoff while Redis is away (a configuration error stops at once).
async fn connect_redis(cfg: RedisConfig) -> anyhow::Result<RedisSource> {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match RedisSource::connect(cfg.clone()).await {
            Ok(source) => return Ok(source),
            Err(e) if e.is_retryable() => {
                let delay = retrier.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach redis; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e).context("connecting to redis"),
        }
    }
}

/// The NATS settings: defaults < `transports.nats` < `CITADEL_NATS_*` < flags.
fn nats_config(
    args: &WorkArgs,
    file: config::NatsSection,
    worker_id: String,
    lease: Duration,
) -> anyhow::Result<NatsConfig> {
    let url = args
        .nats_url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let mut cfg = NatsConfig::new(url, worker_id);
    if !args.nats_subjects.is_empty() {
        cfg.subjects = args.nats_subjects.clone();
    } else if let Some(s) = file.subjects {
        cfg.subjects = s;
    }
    if let Some(s) = args.nats_stream.clone().or(file.stream) {
        cfg.stream = s;
    }
    if let Some(c) = args.nats_consumer.clone().or(file.consumer) {
        cfg.consumer = c;
    }
    cfg.credentials_file = args.nats_credentials.clone().or(file.credentials_file);
    cfg.lease = lease;
    if let Some(s) = args.max_payload.as_ref() {
        cfg.max_payload_bytes =
            usize::try_from(format::parse_size(s).context("setting `max_payload`")?)?;
    }
    Ok(cfg)
}

/// Connects to NATS, retrying with backoff while it is away (a configuration error stops at once).
async fn connect_nats(cfg: NatsConfig) -> anyhow::Result<NatsSource> {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match NatsSource::connect(cfg.clone()).await {
            Ok(source) => return Ok(source),
            Err(e) if e.is_retryable() => {
                let delay = retrier.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach nats; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e).context("connecting to nats"),
        }
    }
}

/// Connects to a control plane, retrying with backoff while it is away.
async fn connect_nexus(cfg: NexusConfig) -> anyhow::Result<NexusSource> {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match NexusSource::connect(cfg.clone()).await {
            Ok(source) => return Ok(source),
            Err(e) if e.is_retryable() => {
                let delay = retrier.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach the control plane; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e).context("connecting to the control plane"),
        }
    }
}

/// The token from `transports.nexus.token_file`, else the local control plane's token file.
pub(crate) fn nexus_token_from_files(
    token_file: Option<&Path>,
    data_dir: &Path,
) -> anyhow::Result<Option<String>> {
    if let Some(f) = token_file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading the token file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()));
    }
    crate::nexus::read_token(&crate::nexus::data_dir(data_dir))
}

/// `redis://user:secret@host` → `redis://user:***@host`: secrets never reach a log.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => format!("{}***{}", &url[..s + 3], &url[at..]),
            }
        }
        _ => url.to_string(),
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

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_redacted() {
        assert_eq!(redact("redis://u:pw@h:6379/0"), "redis://u:***@h:6379/0");
        assert_eq!(redact("redis://pw@h"), "redis://***@h");
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }
}
