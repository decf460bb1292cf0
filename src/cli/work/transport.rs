//! How `citadel work` turns flags, `CITADEL_*` variables and the config file into each
//! transport's settings, which transports it then uses (the registry's list, best first, filtered
//! to the configured ones) and how it connects them with the shared backoff. It owns the
//! precedence rules per transport (defaults < file < environment < flags); it must never run
//! jobs, nor switch transports at run time (`auto` does).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_transports::routing::RouteFeed;
use citadel_transports::{
    websocket, AutoConfig, AutoSource, Backoff, JobSource, NatsConfig, NexusConfig, RedisConfig,
    TransportConfig, TransportName, WebSocketConfig,
};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

use super::{duration, WorkArgs};
use crate::config::{self, AutoSection, FileConfig, NexusSection, RedisSection, WebSocketSection};
use crate::format::{self, redact};

/// `--transport`: `auto` or one transport of the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportChoice {
    /// The best healthy configured transport, falling back when it fails and upgrading back when
    /// it recovers.
    Auto,
    Only(TransportName),
}

/// The values of `--transport`: `auto`, then the registry's names, each with its help.
pub(super) fn transport_parser() -> impl TypedValueParser<Value = TransportChoice> {
    let order: Vec<&str> = TransportName::ALL.iter().map(|n| n.as_str()).collect();
    let auto = format!(
        "The best healthy configured transport ({}), falling back when it fails and upgrading \
         back when it recovers",
        order.join(" > ")
    );
    let values = std::iter::once(PossibleValue::new("auto").help(auto)).chain(
        TransportName::ALL
            .into_iter()
            .map(|n| PossibleValue::new(n.as_str()).help(n.help())),
    );
    PossibleValuesParser::new(values).map(|s| match TransportName::parse(&s) {
        Some(n) => TransportChoice::Only(n),
        None => TransportChoice::Auto,
    })
}

/// Who this worker is to the transports.
#[derive(Debug)]
pub(super) struct Identity<'a> {
    pub node_name: &'a str,
    pub consumer: &'a str,
    pub lease: Duration,
    pub data_dir: &'a Path,
    /// The stream set derived from the node's capabilities, for a transport whose streams are
    /// not listed explicitly.
    pub routes: Option<RouteFeed>,
}

/// Whether a transport takes its streams from routing: Redis is configured (or may be, under
/// `auto`) and no stream is listed explicitly; NATS likewise without listed subjects; or a
/// control plane (nexus, or the embedded one), whose claims offer the routing tags.
pub(super) fn derives_streams(args: &WorkArgs, file: &FileConfig) -> bool {
    let redis_streams = file
        .transports
        .redis
        .as_ref()
        .is_some_and(|r| r.streams.is_some());
    let redis =
        configured(TransportName::Redis, args, file) && args.streams.is_empty() && !redis_streams;
    let nats_subjects = file
        .transports
        .nats
        .as_ref()
        .is_some_and(|n| n.subjects.is_some());
    let nats = configured(TransportName::Nats, args, file)
        && args.nats_subjects.is_empty()
        && !nats_subjects;
    let none = !TransportName::ALL
        .into_iter()
        .any(|n| configured(n, args, file));
    redis || nats || configured(TransportName::Nexus, args, file) || none
}

/// What `citadel work` takes jobs from.
#[derive(Debug)]
pub(super) enum Plan {
    /// One transport (retried with backoff until it connects).
    Only(Box<TransportConfig>),
    /// `auto` over these, best first.
    Auto(Vec<TransportConfig>, AutoConfig),
    /// Nothing configured: an embedded control plane on loopback.
    Embedded,
}

/// Whether the flags, environment or file name a server for `name`.
fn configured(name: TransportName, args: &WorkArgs, file: &FileConfig) -> bool {
    let t = &file.transports;
    match name {
        TransportName::Redis => {
            args.redis_url.is_some() || t.redis.as_ref().is_some_and(|r| r.url.is_some())
        }
        TransportName::Nats => {
            args.nats_url.is_some() || t.nats.as_ref().is_some_and(|n| n.url.is_some())
        }
        TransportName::WebSocket => {
            args.ws_url.is_some() || t.websocket.as_ref().is_some_and(|w| w.url.is_some())
        }
        TransportName::Nexus => nexus_url(args, file).is_some(),
    }
}

fn nexus_url(args: &WorkArgs, file: &FileConfig) -> Option<String> {
    let section = file.transports.nexus.as_ref();
    args.nexus_url
        .clone()
        .or_else(|| section.and_then(|n| n.url.clone()))
}

/// `name`'s settings from the flags, environment and config file.
fn transport_config(
    name: TransportName,
    args: &WorkArgs,
    file: &FileConfig,
    who: &Identity<'_>,
) -> anyhow::Result<TransportConfig> {
    let t = &file.transports;
    let nexus_file = t.nexus.clone().unwrap_or_default();
    let limits = super::settings::Limits::resolve(&args.limits, file)?;
    Ok(match name {
        TransportName::Redis => {
            let r = t.redis.clone().unwrap_or_default();
            let mut c = redis_config(args, r, who.consumer, who.lease, who.routes.clone())?;
            limits.apply_redis(&mut c);
            TransportConfig::Redis(c)
        }
        TransportName::Nats => {
            let n = t.nats.clone().unwrap_or_default();
            let mut c = nats_config(
                args,
                n,
                who.consumer.to_string(),
                who.lease,
                who.routes.clone(),
            )?;
            limits.apply_nats(&mut c);
            TransportConfig::Nats(c)
        }
        TransportName::WebSocket => TransportConfig::WebSocket(websocket_config(
            args,
            &t.websocket.clone().unwrap_or_default(),
            &nexus_file,
            nexus_url(args, file).as_deref(),
            who,
        )?),
        TransportName::Nexus => {
            let Some(url) = nexus_url(args, file) else {
                bail!("--transport nexus needs --nexus-url (or CITADEL_NEXUS_URL, or transports.nexus.url)")
            };
            TransportConfig::Nexus(nexus_config(args, &nexus_file, url, who)?)
        }
    })
}

/// Which transports to use: `--transport` (default `auto`) over the configured ones; `auto`
/// with one configured is that one, with none the embedded control plane.
pub(super) fn plan(args: &WorkArgs, file: &FileConfig, who: &Identity<'_>) -> anyhow::Result<Plan> {
    let configured: Vec<TransportName> = TransportName::ALL
        .into_iter()
        .filter(|n| configured(*n, args, file))
        .collect();
    let only = match (args.transport, configured.as_slice()) {
        (Some(TransportChoice::Auto) | None, []) => return Ok(Plan::Embedded),
        (Some(TransportChoice::Auto) | None, [only]) => *only,
        (Some(TransportChoice::Auto) | None, _) => {
            let configs = configured
                .into_iter()
                .map(|n| transport_config(n, args, file, who))
                .collect::<anyhow::Result<_>>()?;
            let auto = auto_config(args, file.transports.auto.as_ref())?;
            return Ok(Plan::Auto(configs, auto));
        }
        (Some(TransportChoice::Only(n)), _) => n,
    };
    let cfg = transport_config(only, args, file, who)?;
    Ok(Plan::Only(Box::new(cfg)))
}

/// The embedded control plane's nexus settings.
pub(super) fn embedded_config(
    args: &WorkArgs,
    file: &FileConfig,
    url: String,
    token: String,
    who: &Identity<'_>,
) -> anyhow::Result<TransportConfig> {
    let nexus_file = file.transports.nexus.clone().unwrap_or_default();
    let mut cfg = nexus_config(args, &nexus_file, url, who)?;
    cfg.token = Some(token);
    Ok(TransportConfig::Nexus(cfg))
}

/// The start-up line of one transport.
pub(super) fn announce(cfg: &TransportConfig, node_name: &str, consumer: &str, concurrency: usize) {
    let d = cfg.describe();
    eprintln!(
        "citadel {} working: node {node_name}, {} {consumer}, {} {}{}, concurrency {concurrency}",
        env!("CARGO_PKG_VERSION"),
        d.role,
        cfg.name(),
        redact(&d.url),
        d.detail,
    );
}

/// Connects one transport, retrying while its server is away.
pub(super) async fn connect_one(cfg: &TransportConfig) -> anyhow::Result<Arc<dyn JobSource>> {
    connect_retrying(cfg.name().peer(), || cfg.connect()).await
}

/// Starts `auto` over `configs` (best first), after its start-up line.
pub(super) async fn start_auto(
    configs: Vec<TransportConfig>,
    auto: AutoConfig,
    node_name: &str,
    consumer: &str,
    concurrency: usize,
) -> anyhow::Result<Arc<dyn JobSource>> {
    let names: Vec<&str> = configs.iter().map(|c| c.name().as_str()).collect();
    eprintln!(
        "citadel {} working: node {node_name}, worker {consumer}, transport auto over {} (falls back within {}), concurrency {concurrency}",
        env!("CARGO_PKG_VERSION"),
        names.join(" > "),
        humantime::format_duration(auto.detection_bound()),
    );
    let candidates = configs
        .into_iter()
        .map(TransportConfig::candidate)
        .collect();
    let source = AutoSource::start(candidates, auto)
        .await
        .context("starting the auto transport")?;
    Ok(Arc::new(source))
}

/// The Redis transport's settings from the flags, environment and config file.
fn redis_config(
    args: &WorkArgs,
    r: RedisSection,
    consumer: &str,
    lease: Duration,
    routes: Option<RouteFeed>,
) -> anyhow::Result<RedisConfig> {
    let url = args
        .redis_url
        .clone()
        .or(r.url)
        .unwrap_or_else(|| config::default_of("transports.redis.url").to_owned());
    let mut cfg = RedisConfig::new(url, consumer.to_string());
    if !args.streams.is_empty() {
        cfg.streams = args.streams.clone();
    } else if let Some(s) = r.streams {
        cfg.streams = s;
    } else {
        cfg.routes = routes;
    }
    if let Some(g) = args.group.clone().or(r.group) {
        cfg.group = g;
    }
    cfg.lease = lease;
    if let Some(s) = args.max_payload.as_ref().or(r.max_payload.as_ref()) {
        cfg.max_payload_bytes =
            usize::try_from(format::parse_size(s).context("setting `max_payload`")?)?;
    }
    Ok(cfg)
}

/// The nexus transport's settings; the token from the flag, the config's token file or the
/// local control plane's.
fn nexus_config(
    args: &WorkArgs,
    file: &NexusSection,
    url: String,
    who: &Identity<'_>,
) -> anyhow::Result<NexusConfig> {
    let mut cfg = NexusConfig::new(url, who.consumer.to_string());
    cfg.token = match args.nexus_token.clone() {
        Some(t) => Some(t),
        None => nexus_token_from_files(file.token_file.as_deref(), who.data_dir)?,
    };
    cfg.node_name = who.node_name.to_string();
    cfg.lease = who.lease;
    cfg.routes = who.routes.clone();
    Ok(cfg)
}

/// The websocket transport's settings: the URL from `--ws-url`/the config, else derived from the
/// nexus URL; the token as for nexus (the websocket token file first).
fn websocket_config(
    args: &WorkArgs,
    ws_file: &WebSocketSection,
    nexus_file: &NexusSection,
    nexus_url: Option<&str>,
    who: &Identity<'_>,
) -> anyhow::Result<WebSocketConfig> {
    let url = match (args.ws_url.clone().or(ws_file.url.clone()), nexus_url) {
        (Some(url), _) => url,
        (None, Some(http)) => websocket::ws_url(http).context("deriving the WebSocket URL")?,
        (None, None) => bail!(
            "--transport websocket needs --nexus-url or --ws-url (or CITADEL_NEXUS_URL, CITADEL_WS_URL, \
             transports.websocket.url, transports.nexus.url)"
        ),
    };
    let token = match args.nexus_token.clone() {
        Some(t) => Some(t),
        None => nexus_token_from_files(
            ws_file
                .token_file
                .as_deref()
                .or(nexus_file.token_file.as_deref()),
            who.data_dir,
        )?,
    };
    let mut cfg = WebSocketConfig::new(url, who.consumer.to_string());
    cfg.token = token;
    cfg.node_name = who.node_name.to_string();
    cfg.lease = who.lease;
    Ok(cfg)
}

/// How `auto` probes and switches, from the flags and `transports.auto`.
fn auto_config(args: &WorkArgs, a: Option<&AutoSection>) -> anyhow::Result<AutoConfig> {
    let mut cfg = AutoConfig::default();
    cfg.policy.fail_after = duration(
        "fallback_after",
        args.fallback_after.as_ref(),
        a.and_then(|a| a.fallback_after.as_ref()),
        cfg.policy.fail_after,
    )?;
    cfg.policy.recover_after = duration(
        "upgrade_after",
        args.upgrade_after.as_ref(),
        a.and_then(|a| a.upgrade_after.as_ref()),
        cfg.policy.recover_after,
    )?;
    cfg.probe_interval = duration(
        "probe_interval",
        args.probe_interval.as_ref(),
        a.and_then(|a| a.probe_interval.as_ref()),
        cfg.probe_interval,
    )?;
    if cfg.probe_interval.is_zero() {
        bail!("setting `probe_interval` must be more than 0");
    }
    Ok(cfg)
}

/// The NATS settings: defaults < `transports.nats` < `CITADEL_NATS_*` < flags; without
/// configured subjects, the routed ones.
fn nats_config(
    args: &WorkArgs,
    file: config::NatsSection,
    worker_id: String,
    lease: Duration,
    routes: Option<RouteFeed>,
) -> anyhow::Result<NatsConfig> {
    let url = args
        .nats_url
        .clone()
        .or(file.url)
        .unwrap_or_else(|| config::default_of("transports.nats.url").to_owned());
    let mut cfg = NatsConfig::new(url, worker_id);
    if !args.nats_subjects.is_empty() {
        cfg.subjects = args.nats_subjects.clone();
    } else if let Some(s) = file.subjects {
        cfg.subjects = s;
    } else {
        // No subjects configured: those derived from the node's capabilities, live.
        cfg.routes = routes;
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

/// Connects with `connect`, retrying with backoff while the server is away (any error that is not
/// retryable, a configuration error above all, stops at once).
async fn connect_retrying<S, F, Fut>(what: &str, mut connect: F) -> anyhow::Result<S>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<S, citadel_transports::SourceError>>,
{
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match connect().await {
            Ok(source) => return Ok(source),
            Err(e) if e.is_retryable() => {
                let delay = retrier.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reach {what}; retrying");
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {what}")),
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
    citadel_nexus::read_token(&citadel_nexus::data_dir(data_dir))
}
