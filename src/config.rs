//! The node manifest (`citadel.yaml`, docs/node-management.md): node name and tags, services, transports,
//! permissions, worker and journal settings. Parsing is strict: an unknown key or an unknown
//! service is an error that names the field and the line, so a typo never silently falls back
//! to a default. Values are layered by the commands: defaults < this file < `CITADEL_*`
//! environment < flags; [`effective`] says where each value came from (`citadel config show`).
//! Writing goes through [`write_manifest`] only (validated, temp file + rename, mode 0600); the
//! manifest never holds a secret itself, only the names of the files or variables that do.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub transports: TransportsSection,
    #[serde(default)]
    pub permissions: PermissionsSection,
    /// The inference engines this node runs as compose services (`citadel up` converges them).
    #[serde(default)]
    pub services: Vec<citadel_compose::ServiceSpec>,
    #[serde(default)]
    pub monitoring: MonitoringSection,
    #[serde(default)]
    pub llm: LlmSection,
    #[serde(default)]
    pub routing: RoutingSection,
    #[serde(default)]
    pub mesh: MeshSection,
}

/// `mesh:`: whether this node joins its organization's mesh (docs/mesh.md#running-it).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshSection {
    /// Default: on once the node is enrolled with a control plane, off otherwise.
    pub enabled: Option<bool>,
}

/// Which job streams the node derives from its capabilities (docs/transports.md#routing), when
/// no stream or subject is listed explicitly.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingSection {
    /// `gpu` (default), `cpu`, `auto` (cpu-general without a GPU) or `both`.
    pub base: Option<String>,
    /// The organization whose streams the node also reads.
    pub org: Option<String>,
    /// The categories of detected tags that get a stream (default gpu, vram, engine, model).
    pub categories: Option<Vec<String>>,
    /// How often engines and their models are probed again, e.g. `5s`.
    pub probe_interval: Option<String>,
}

/// What the platform's onboarding wizard sets about monitoring. Stored for the heartbeat and
/// alerting; nothing in citadel acts on it yet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitoringSection {
    pub health: Option<bool>,
    pub alert_on_offline: Option<bool>,
    pub alert_on_high_temp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: Option<String>,
    /// Capability tags the node advertises (routing: `jobs:v1:tag:{tag}`).
    pub tags: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub concurrency: Option<usize>,
    /// e.g. `30s`.
    pub drain_timeout: Option<String>,
    /// e.g. `1h`.
    pub default_timeout: Option<String>,
    pub max_attempts: Option<u32>,
    /// The status server's address, `auto` or `off`.
    pub status_listen: Option<String>,
    /// e.g. `30s`.
    pub heartbeat_interval: Option<String>,
    /// Where `model_download` puts files (default DATA_DIR/models).
    pub models_dir: Option<PathBuf>,
    /// The extraction (GLiNER) service's URL.
    pub extraction_url: Option<String>,
    #[serde(default)]
    pub journal: JournalSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    /// Settled jobs older than this are compacted away, e.g. `7d`; `0` keeps everything.
    pub retention: Option<String>,
    /// Then the oldest settled jobs go until the events take at most this, e.g. `1GiB`.
    pub max_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportsSection {
    pub redis: Option<RedisSection>,
    pub nexus: Option<NexusSection>,
    pub auto: Option<AutoSection>,
    pub websocket: Option<WebSocketSection>,
    pub nats: Option<NatsSection>,
    pub dead_letters: Option<DeadLettersSection>,
}

/// The caps of the dead-letter streams (Redis `dlq:v1:…`, the NATS `DLQ` stream).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLettersSection {
    /// The most dead letters kept per stream.
    pub max_len: Option<u64>,
    /// e.g. `30d`; `0` for no age limit.
    pub max_age: Option<String>,
}

/// How `--transport auto` switches (durations such as `3s`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoSection {
    pub fallback_after: Option<String>,
    pub upgrade_after: Option<String>,
    pub probe_interval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSocketSection {
    /// `ws://host:port/api/v1/ws` (or `wss://`); default: derived from `transports.nexus.url`.
    pub url: Option<String>,
    /// A file holding the bearer token (default: `transports.nexus.token_file`, else the local
    /// control plane's token).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// `nats://host:port` (comma separated for a cluster).
    pub url: Option<String>,
    /// The JetStream stream of the job subjects (default `JOBS`).
    pub stream: Option<String>,
    /// The job subjects to consume (default `[jobs.v1.gpu-general]`).
    pub subjects: Option<Vec<String>>,
    /// The durable pull consumer (default `workers`).
    pub consumer: Option<String>,
    /// A `.creds` file (the credentials never go into this file).
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexusSection {
    /// `http://host:port` of the control plane.
    pub url: Option<String>,
    /// A file holding the bearer token (the token itself never goes into this file).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    pub streams: Option<Vec<String>>,
    pub group: Option<String>,
    /// e.g. `60s`.
    pub lease: Option<String>,
    /// e.g. `16MiB`.
    pub max_payload: Option<String>,
    /// Keep acked entries (trimmed below what every consumer group still needs).
    pub keep_acked: Option<bool>,
    /// How long a job's event stream lives after its terminal event, e.g. `5m`.
    pub events_grace: Option<String>,
    /// How long a job's status hash lives after its last update, e.g. `7d`.
    pub status_ttl: Option<String>,
    /// How long a job's completion record lives, e.g. `7d`.
    pub done_ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsSection {
    #[serde(default)]
    pub shell: ShellSection,
    /// The terminal service (a remote shell: off by default).
    #[serde(default)]
    pub console: ConsoleSection,
    /// The old name of `console`, still read (with a warning) and moved there on parsing.
    #[serde(default)]
    pub terminal: Option<ConsoleSection>,
    #[serde(default)]
    pub ssh: ToggleSection,
}

/// `permissions.console`: the terminal service and its limits (durations such as `30m`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSection {
    pub enabled: Option<bool>,
    /// HOST:PORT of its listener.
    pub listen: Option<String>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<String>,
    /// Requests per second per client, and the burst.
    pub rate_per_second: Option<f64>,
    pub rate_burst: Option<f64>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Option<Vec<String>>,
    /// Browser origins allowed besides localhost.
    pub allowed_origins: Option<Vec<String>>,
    /// Refuse connections without the node passcode.
    pub passcode_required: Option<bool>,
    /// Hex SHA-256 of the node passcode (never the passcode itself).
    pub passcode_hash: Option<String>,
    /// `auto` (tmux when installed), `off` or `required`.
    pub tmux: Option<String>,
    /// Detached tmux sessions idle this long are ended.
    pub session_ttl: Option<String>,
}

/// A permission that is only on or off (off by default).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToggleSection {
    pub enabled: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSection {
    pub enabled: Option<bool>,
    pub allow: Option<Vec<String>>,
    /// The name of an environment variable holding the passcode (the passcode itself never
    /// goes into the file).
    pub passcode_env: Option<String>,
    pub max_output: Option<String>,
}

/// `llm:`: where the inference engines listen and how long `llm_inference` waits for them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSection {
    /// Base URL per engine (`vllm`, `sglang`, `ollama`, `llamacpp`), e.g.
    /// `vllm: http://127.0.0.1:8201`.
    pub engines: Option<std::collections::BTreeMap<String, String>>,
    /// e.g. `5s`.
    pub connect_timeout: Option<String>,
    /// How long a job waits for an engine that is still loading, e.g. `30s`.
    pub ready_timeout: Option<String>,
    /// From the request to the first token, e.g. `2m`.
    pub first_token_timeout: Option<String>,
    /// Between tokens, e.g. `30s`.
    pub idle_timeout: Option<String>,
}

impl FileConfig {
    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the config file {}", path.display()))
            }
        };
        Self::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let mut config: Self = yaml_serde::from_str(text)?;
        if let Some(old) = config.permissions.terminal.take() {
            if config.permissions.console.enabled.is_some() {
                anyhow::bail!(
                    "permissions: `terminal` is the old name of `console`: keep only `console`"
                );
            }
            tracing::warn!(
                "permissions.terminal is now permissions.console: rename it in the manifest"
            );
            config.permissions.console = old;
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in config.services.iter().enumerate() {
            if !seen.insert(s.engine) {
                anyhow::bail!(
                    "services[{i}]: the service {:?} is listed twice",
                    s.engine.name()
                );
            }
        }
        Ok(config)
    }
}

/// Writes a manifest: refuses text that does not parse, then writes a temp file (mode 0600)
/// beside it, syncs it and renames it over the old one, so a reader sees the old or the new
/// manifest, never a part.
pub fn write_manifest(path: &Path, text: &str) -> anyhow::Result<()> {
    FileConfig::parse(text).context("refusing to write an invalid manifest")?;
    crate::paths::write_private(path, text.as_bytes())
}

/// Where an effective setting came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Default,
    Manifest,
    Env(&'static str),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Default => f.write_str("default"),
            Source::Manifest => f.write_str("manifest"),
            Source::Env(v) => write!(f, "env {v}"),
        }
    }
}

/// One setting as the node will use it.
#[derive(Debug, Clone)]
pub struct Effective {
    pub key: &'static str,
    pub value: String,
    pub source: Source,
}

/// One setting of the node: its key in the manifest, the `citadel work` flag and the
/// `CITADEL_*` variable that override it (when there are), and its default as `citadel config
/// show` prints it. `citadel work` takes its defaults from here too ([`default_of`]).
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    pub key: &'static str,
    pub flag: Option<&'static str>,
    pub env: Option<&'static str>,
    pub default: &'static str,
}

const fn row(
    key: &'static str,
    flag: Option<&'static str>,
    env: Option<&'static str>,
    default: &'static str,
) -> Setting {
    Setting {
        key,
        flag,
        env,
        default,
    }
}

/// The default of `node.name`: this machine's host name.
const HOST_NAME: &str = "(host name)";
/// The default of `transport`: `auto` over the registry's transports.
const AUTO: &str = "(auto)";
/// The default of `mesh.enabled`: on once the node is enrolled with a control plane.
pub const MESH_WHEN_ENROLLED: &str = "(on when enrolled)";

/// Every setting, in the order `citadel config show` lists them.
pub const SETTINGS: &[Setting] = &[
    row(
        "node.name",
        Some("--node-name"),
        Some("CITADEL_NODE_NAME"),
        HOST_NAME,
    ),
    row("node.tags", None, None, ""),
    row(
        "routing.base",
        Some("--routing-base"),
        Some("CITADEL_ROUTING_BASE"),
        "gpu",
    ),
    row("routing.org", Some("--org"), Some("CITADEL_ORG"), ""),
    row("routing.categories", None, None, "gpu,vram,engine,model"),
    row(
        "routing.probe_interval",
        Some("--routing-probe-interval"),
        Some("CITADEL_ROUTING_PROBE_INTERVAL"),
        "5s",
    ),
    row("services", None, None, ""),
    row(
        "transport",
        Some("--transport"),
        Some("CITADEL_TRANSPORT"),
        AUTO,
    ),
    row(
        "worker.concurrency",
        Some("--concurrency"),
        Some("CITADEL_CONCURRENCY"),
        "1",
    ),
    row(
        "worker.drain_timeout",
        Some("--drain-timeout"),
        Some("CITADEL_DRAIN_TIMEOUT"),
        "30s",
    ),
    row(
        "worker.default_timeout",
        Some("--default-timeout"),
        Some("CITADEL_DEFAULT_TIMEOUT"),
        "1h",
    ),
    row(
        "worker.max_attempts",
        Some("--max-attempts"),
        Some("CITADEL_MAX_ATTEMPTS"),
        "3",
    ),
    row(
        "worker.journal.retention",
        Some("--journal-retention"),
        Some("CITADEL_JOURNAL_RETENTION"),
        "7d",
    ),
    row(
        "worker.journal.max_size",
        Some("--journal-max-size"),
        Some("CITADEL_JOURNAL_MAX_SIZE"),
        "(unbounded)",
    ),
    row(
        "worker.status_listen",
        Some("--status-listen"),
        Some("CITADEL_STATUS_LISTEN"),
        "auto",
    ),
    row(
        "worker.heartbeat_interval",
        Some("--heartbeat-interval"),
        Some("CITADEL_HEARTBEAT_INTERVAL"),
        "30s",
    ),
    row(
        "worker.models_dir",
        Some("--models-dir"),
        Some("CITADEL_MODELS_DIR"),
        "DATA_DIR/models",
    ),
    row(
        "worker.extraction_url",
        Some("--extraction-url"),
        Some("CITADEL_EXTRACTION_URL"),
        crate::handlers::extraction::DEFAULT_URL,
    ),
    row(
        "transports.auto.fallback_after",
        Some("--fallback-after"),
        Some("CITADEL_FALLBACK_AFTER"),
        "3s",
    ),
    row(
        "transports.auto.upgrade_after",
        Some("--upgrade-after"),
        Some("CITADEL_UPGRADE_AFTER"),
        "5s",
    ),
    row(
        "transports.auto.probe_interval",
        Some("--probe-interval"),
        Some("CITADEL_PROBE_INTERVAL"),
        "1s",
    ),
    row(
        "transports.redis.url",
        Some("--redis-url"),
        Some("CITADEL_REDIS_URL"),
        "redis://127.0.0.1:6379",
    ),
    row(
        "transports.redis.streams",
        Some("--stream"),
        Some("CITADEL_STREAMS"),
        "(derived from routing.*)",
    ),
    row(
        "transports.redis.group",
        Some("--group"),
        Some("CITADEL_GROUP"),
        "workers",
    ),
    row(
        "transports.redis.lease",
        Some("--lease"),
        Some("CITADEL_LEASE"),
        "60s",
    ),
    row(
        "transports.redis.max_payload",
        Some("--max-payload"),
        Some("CITADEL_MAX_PAYLOAD"),
        "16MiB",
    ),
    row(
        "transports.redis.keep_acked",
        Some("--keep-acked"),
        Some("CITADEL_KEEP_ACKED"),
        "false",
    ),
    row(
        "transports.redis.events_grace",
        Some("--events-grace"),
        Some("CITADEL_EVENTS_GRACE"),
        "5m",
    ),
    row(
        "transports.redis.status_ttl",
        Some("--status-ttl"),
        Some("CITADEL_STATUS_TTL"),
        "7d",
    ),
    row(
        "transports.redis.done_ttl",
        Some("--done-ttl"),
        Some("CITADEL_DONE_TTL"),
        "7d",
    ),
    row(
        "transports.dead_letters.max_len",
        Some("--dlq-max-len"),
        Some("CITADEL_DLQ_MAX_LEN"),
        "100000",
    ),
    row(
        "transports.dead_letters.max_age",
        Some("--dlq-max-age"),
        Some("CITADEL_DLQ_MAX_AGE"),
        "30d",
    ),
    row(
        "transports.nats.url",
        Some("--nats-url"),
        Some("CITADEL_NATS_URL"),
        "nats://127.0.0.1:4222",
    ),
    row(
        "transports.nats.stream",
        Some("--nats-stream"),
        Some("CITADEL_NATS_STREAM"),
        citadel_transports::nats::DEFAULT_STREAM,
    ),
    row(
        "transports.nats.subjects",
        Some("--nats-subject"),
        Some("CITADEL_NATS_SUBJECTS"),
        citadel_transports::nats::DEFAULT_SUBJECT,
    ),
    row(
        "transports.nats.consumer",
        Some("--nats-consumer"),
        Some("CITADEL_NATS_CONSUMER"),
        citadel_transports::nats::DEFAULT_CONSUMER,
    ),
    row(
        "transports.nats.credentials_file",
        Some("--nats-credentials"),
        Some("CITADEL_NATS_CREDENTIALS"),
        "",
    ),
    row(
        "transports.websocket.url",
        Some("--ws-url"),
        Some("CITADEL_WS_URL"),
        "(from transports.nexus.url)",
    ),
    row(
        "transports.websocket.token_file",
        None,
        None,
        "(transports.nexus.token_file)",
    ),
    row(
        "transports.nexus.url",
        Some("--nexus-url"),
        Some("CITADEL_NEXUS_URL"),
        "",
    ),
    row("transports.nexus.token_file", None, None, ""),
    row(
        "permissions.shell.enabled",
        Some("--enable-shell"),
        Some("CITADEL_ENABLE_SHELL"),
        "false",
    ),
    row(
        "permissions.shell.allow",
        Some("--shell-allow"),
        Some("CITADEL_SHELL_ALLOW"),
        "(any program)",
    ),
    row(
        "permissions.shell.passcode_env",
        None,
        None,
        "CITADEL_SHELL_PASSCODE",
    ),
    row("permissions.shell.max_output", None, None, "1MiB"),
    row("permissions.console.enabled", None, None, "false"),
    row(
        "permissions.console.listen",
        Some("--terminal-listen"),
        Some("CITADEL_TERMINAL_LISTEN"),
        crate::terminal::DEFAULT_LISTEN,
    ),
    row("permissions.console.max_connections", None, None, "10"),
    row("permissions.console.idle_timeout", None, None, "30m"),
    row("permissions.console.rate_per_second", None, None, "1"),
    row("permissions.console.rate_burst", None, None, "5"),
    row("permissions.console.trusted_proxies", None, None, "(none)"),
    row(
        "permissions.console.allowed_origins",
        None,
        None,
        "(localhost only)",
    ),
    row("permissions.console.passcode_required", None, None, "false"),
    row("permissions.console.passcode_hash", None, None, "(none)"),
    row("permissions.console.tmux", None, None, "auto"),
    row("permissions.console.session_ttl", None, None, "24h"),
    row("permissions.ssh.enabled", None, None, "false"),
    row(
        "mesh.enabled",
        Some("--mesh"),
        Some("CITADEL_MESH_ENABLED"),
        MESH_WHEN_ENROLLED,
    ),
];

/// The default of the setting `key` (a key of [`SETTINGS`]).
pub fn default_of(key: &str) -> &'static str {
    SETTINGS
        .iter()
        .find(|s| s.key == key)
        .map_or("", |s| s.default)
}

/// What the manifest says of `key`, as text.
fn file_value(file: &FileConfig, key: &str) -> Option<String> {
    let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(","));
    let w = &file.worker;
    let redis = file.transports.redis.as_ref();
    let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let t = &file.transports;
    let dead = t.dead_letters.as_ref();
    let (nexus, nats, ws, auto) = (
        t.nexus.as_ref(),
        t.nats.as_ref(),
        t.websocket.as_ref(),
        t.auto.as_ref(),
    );
    let shell = &file.permissions.shell;
    match key {
        "node.name" => file.node.name.clone(),
        "node.tags" => list(&file.node.tags),
        "routing.base" => file.routing.base.clone(),
        "routing.org" => file.routing.org.clone(),
        "routing.categories" => list(&file.routing.categories),
        "routing.probe_interval" => file.routing.probe_interval.clone(),
        "services" => {
            let names: Vec<&str> = file.services.iter().map(|s| s.engine.name()).collect();
            (!names.is_empty()).then(|| names.join(","))
        }
        "worker.concurrency" => w.concurrency.map(|c| c.to_string()),
        "worker.drain_timeout" => w.drain_timeout.clone(),
        "worker.default_timeout" => w.default_timeout.clone(),
        "worker.max_attempts" => w.max_attempts.map(|c| c.to_string()),
        "worker.journal.retention" => w.journal.retention.clone(),
        "worker.journal.max_size" => w.journal.max_size.clone(),
        "worker.status_listen" => w.status_listen.clone(),
        "worker.heartbeat_interval" => w.heartbeat_interval.clone(),
        "worker.models_dir" => path(&w.models_dir),
        "worker.extraction_url" => w.extraction_url.clone(),
        "transports.auto.fallback_after" => auto.and_then(|a| a.fallback_after.clone()),
        "transports.auto.upgrade_after" => auto.and_then(|a| a.upgrade_after.clone()),
        "transports.auto.probe_interval" => auto.and_then(|a| a.probe_interval.clone()),
        "transports.redis.url" => redis.and_then(|r| r.url.clone()),
        "transports.redis.max_payload" => redis.and_then(|r| r.max_payload.clone()),
        "transports.redis.keep_acked" => redis.and_then(|r| r.keep_acked.map(|b| b.to_string())),
        "transports.redis.events_grace" => redis.and_then(|r| r.events_grace.clone()),
        "transports.redis.status_ttl" => redis.and_then(|r| r.status_ttl.clone()),
        "transports.redis.done_ttl" => redis.and_then(|r| r.done_ttl.clone()),
        "transports.dead_letters.max_len" => dead.and_then(|d| d.max_len.map(|n| n.to_string())),
        "transports.dead_letters.max_age" => dead.and_then(|d| d.max_age.clone()),
        "transports.nats.url" => nats.and_then(|n| n.url.clone()),
        "transports.nats.stream" => nats.and_then(|n| n.stream.clone()),
        "transports.nats.subjects" => nats.and_then(|n| list(&n.subjects)),
        "transports.nats.consumer" => nats.and_then(|n| n.consumer.clone()),
        "transports.nats.credentials_file" => nats.and_then(|n| path(&n.credentials_file)),
        "transports.websocket.url" => ws.and_then(|n| n.url.clone()),
        "transports.websocket.token_file" => ws.and_then(|n| path(&n.token_file)),
        "transports.redis.streams" => redis.and_then(|r| list(&r.streams)),
        "transports.redis.group" => redis.and_then(|r| r.group.clone()),
        "transports.redis.lease" => redis.and_then(|r| r.lease.clone()),
        "transports.nexus.url" => nexus.and_then(|n| n.url.clone()),
        "transports.nexus.token_file" => nexus.and_then(|n| path(&n.token_file)),
        "permissions.shell.enabled" => shell.enabled.map(|b| b.to_string()),
        "permissions.shell.allow" => list(&shell.allow),
        "permissions.shell.passcode_env" => shell.passcode_env.clone(),
        "permissions.shell.max_output" => shell.max_output.clone(),
        k if k.starts_with("permissions.console.") => console_value(&file.permissions.console, k),
        "permissions.ssh.enabled" => file.permissions.ssh.enabled.map(|b| b.to_string()),
        "mesh.enabled" => file.mesh.enabled.map(|b| b.to_string()),
        _ => None,
    }
}

/// What `permissions.console` says of `key`, as text (the passcode hash only as `(set)`).
fn console_value(c: &ConsoleSection, key: &str) -> Option<String> {
    let list = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.join(","));
    match key.trim_start_matches("permissions.console.") {
        "enabled" => c.enabled.map(|b| b.to_string()),
        "listen" => c.listen.clone(),
        "max_connections" => c.max_connections.map(|n| n.to_string()),
        "idle_timeout" => c.idle_timeout.clone(),
        "rate_per_second" => c.rate_per_second.map(|n| n.to_string()),
        "rate_burst" => c.rate_burst.map(|n| n.to_string()),
        "trusted_proxies" => list(&c.trusted_proxies),
        "allowed_origins" => list(&c.allowed_origins),
        "passcode_required" => c.passcode_required.map(|b| b.to_string()),
        "passcode_hash" => c.passcode_hash.as_ref().map(|_| "(set)".to_string()),
        "tmux" => c.tmux.clone(),
        "session_ttl" => c.session_ttl.clone(),
        _ => None,
    }
}

/// A default as the node will use it: the host name, `auto` over the registry's transports in
/// their order, or the table's text.
fn resolved_default(s: &Setting) -> String {
    match s.default {
        HOST_NAME => crate::node::host_name(),
        AUTO => {
            let names: Vec<&str> = citadel_transports::TransportName::ALL
                .iter()
                .map(|n| n.as_str())
                .collect();
            format!("auto ({})", names.join(" > "))
        }
        d => d.to_string(),
    }
}

/// The effective settings (defaults < manifest < environment), with where each came from.
/// Command-line flags override these per command and are not seen here.
pub fn effective(file: &FileConfig, env: &dyn Fn(&str) -> Option<String>) -> Vec<Effective> {
    SETTINGS
        .iter()
        .map(|s| {
            let from_env = s
                .env
                .and_then(|v| env(v).filter(|x| !x.is_empty()).map(|x| (v, x)));
            let (value, source) = match (from_env, file_value(file, s.key)) {
                (Some((v, x)), _) => (x, Source::Env(v)),
                (None, Some(f)) => (f, Source::Manifest),
                (None, None) => (resolved_default(s), Source::Default),
            };
            Effective {
                key: s.key,
                value,
                source,
            }
        })
        .collect()
}

/// Where `citadel work` looks for its config: `--config`/`CITADEL_CONFIG`, else
/// `DATA_DIR/citadel.yaml` when it exists.
pub fn config_path(explicit: Option<&Path>, data_dir: &Path) -> (PathBuf, bool) {
    match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (data_dir.join("citadel.yaml"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_are_checked_by_name_with_the_line() {
        let c = FileConfig::parse(
            "services:\n  - name: vllm\n    port: 9001\n    gpu: false\n  - name: llama.cpp\n",
        )
        .unwrap();
        let specs = &c.services;
        assert_eq!(specs[0].port(), 9001);
        assert_eq!(specs[1].engine, citadel_compose::Engine::Llamacpp);
        let err = format!(
            "{:#}",
            FileConfig::parse("node:\n  name: a\nservices:\n  - name: vlm\n").unwrap_err()
        );
        assert!(err.contains("vlm") && err.contains("line 4"), "{err}");
        let err = format!(
            "{:#}",
            FileConfig::parse("services:\n  - name: ollama\n  - name: ollama\n").unwrap_err()
        );
        assert!(err.contains("twice"), "{err}");
        let err = format!(
            "{:#}",
            FileConfig::parse("services:\n  - name: ollama\n    prot: 1\n").unwrap_err()
        );
        assert!(err.contains("prot") && err.contains("line 3"), "{err}");
    }

    #[test]
    fn writes_are_atomic_0600_and_refuse_invalid_text() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citadel.yaml");
        write_manifest(&path, "node:\n  name: a\n").unwrap();
        assert!(write_manifest(&path, "node:\n  nam: b\n").is_err());
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "node:\n  name: a\n"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }

    #[test]
    fn effective_settings_say_where_they_came_from() {
        let c = FileConfig::parse("worker:\n  concurrency: 4\n  max_attempts: 5\n").unwrap();
        let env = |k: &str| (k == "CITADEL_CONCURRENCY").then(|| "8".to_string());
        let rows = effective(&c, &env);
        let get = |k: &str| rows.iter().find(|r| r.key == k).unwrap().clone();
        assert_eq!(
            (
                get("worker.concurrency").value,
                get("worker.concurrency").source
            ),
            ("8".into(), Source::Env("CITADEL_CONCURRENCY"))
        );
        assert_eq!(get("worker.max_attempts").source, Source::Manifest);
        assert_eq!(
            (
                get("worker.drain_timeout").value,
                get("worker.drain_timeout").source
            ),
            ("30s".into(), Source::Default)
        );
    }

    #[test]
    fn a_full_file_parses() {
        let c = FileConfig::parse(
            "node:\n  name: gpu-1\nworker:\n  concurrency: 4\n  drain_timeout: 10s\n\
             transports:\n  redis:\n    url: redis://127.0.0.1:7000\n    streams: [a, b]\n    lease: 5s\n\
             permissions:\n  shell:\n    enabled: true\n    allow: [echo]\n\
             llm:\n  engines:\n    vllm: http://10.0.0.2:8000\n  idle_timeout: 10s\n",
        )
        .unwrap();
        assert_eq!(c.node.name.as_deref(), Some("gpu-1"));
        assert_eq!(c.worker.concurrency, Some(4));
        let redis = c.transports.redis.unwrap();
        assert_eq!(redis.streams.unwrap(), vec!["a", "b"]);
        assert_eq!(c.permissions.shell.enabled, Some(true));
        assert_eq!(c.llm.engines.unwrap()["vllm"], "http://10.0.0.2:8000");
        assert_eq!(c.llm.idle_timeout.as_deref(), Some("10s"));
    }

    #[test]
    fn the_nats_section_parses() {
        let c = FileConfig::parse(
            "transports:\n  nats:\n    url: nats://127.0.0.1:4222\n    stream: JOBS\n    \
             subjects: [jobs.v1.a, jobs.v1.b]\n    consumer: fleet\n    credentials_file: /etc/n.creds\n",
        )
        .unwrap();
        let nats = c.transports.nats.unwrap();
        assert_eq!(nats.subjects.unwrap(), vec!["jobs.v1.a", "jobs.v1.b"]);
        assert_eq!(nats.consumer.as_deref(), Some("fleet"));
        assert!(FileConfig::parse("transports:\n  nats:\n    subject: x\n").is_err());
    }

    #[test]
    fn the_old_terminal_key_is_read_as_console() {
        let c = FileConfig::parse("permissions:\n  terminal:\n    enabled: true\n").unwrap();
        assert_eq!(c.permissions.console.enabled, Some(true));
        assert!(c.permissions.terminal.is_none());
        let c = FileConfig::parse(
            "permissions:\n  console:\n    enabled: true\n    listen: 127.0.0.1:9\n",
        )
        .unwrap();
        assert_eq!(c.permissions.console.listen.as_deref(), Some("127.0.0.1:9"));
        assert!(FileConfig::parse(
            "permissions:\n  console:\n    enabled: true\n  terminal:\n    enabled: false\n"
        )
        .is_err());
        assert!(FileConfig::parse("permissions:\n  console:\n    enabld: true\n").is_err());
    }

    #[test]
    fn the_mesh_section_parses_and_shows_where_it_came_from() {
        let c = FileConfig::parse("mesh:\n  enabled: false\n").unwrap();
        assert_eq!(c.mesh.enabled, Some(false));
        assert!(FileConfig::parse("mesh:\n  enable: false\n").is_err());
        let row = |c: &FileConfig, env: &dyn Fn(&str) -> Option<String>| {
            let rows = effective(c, env);
            let r = rows.into_iter().find(|r| r.key == "mesh.enabled").unwrap();
            (r.value, r.source)
        };
        let none = |_: &str| None;
        assert_eq!(row(&c, &none), ("false".into(), Source::Manifest));
        let on = |k: &str| (k == "CITADEL_MESH_ENABLED").then(|| "true".to_string());
        assert_eq!(
            row(&c, &on),
            ("true".into(), Source::Env("CITADEL_MESH_ENABLED"))
        );
        assert_eq!(
            row(&FileConfig::default(), &none),
            (MESH_WHEN_ENROLLED.into(), Source::Default)
        );
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = FileConfig::parse("worker:\n  concurency: 4\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("concurency") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(FileConfig::parse("").unwrap().worker.concurrency.is_none());
    }
}
