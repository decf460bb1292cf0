//! How `citadel work` turns flags, `CITADEL_*` variables and the config file into each
//! transport's settings, and connects with the shared backoff. It owns the precedence rules per
//! transport (defaults < file < environment < flags); it must never run jobs or pick between
//! transports (`work` decides which, `auto` switches at run time).

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_transports::{
    websocket, AutoConfig, Backoff, NatsConfig, NexusConfig, RedisConfig, WebSocketConfig,
};

use super::{duration, WorkArgs};
use crate::config::{self, AutoSection, NexusSection, RedisSection, WebSocketSection};
use crate::format;

/// The Redis transport's settings from the flags, environment and config file.
pub(super) fn redis_config(
    args: &WorkArgs,
    r: RedisSection,
    consumer: &str,
    lease: Duration,
) -> anyhow::Result<RedisConfig> {
    let url = args
        .redis_url
        .clone()
        .or(r.url)
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let mut cfg = RedisConfig::new(url, consumer.to_string());
    if !args.streams.is_empty() {
        cfg.streams = args.streams.clone();
    } else if let Some(s) = r.streams {
        cfg.streams = s;
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
pub(super) fn nexus_config(
    args: &WorkArgs,
    file: &NexusSection,
    url: String,
    consumer: &str,
    node_name: &str,
    lease: Duration,
    data_dir: &Path,
) -> anyhow::Result<NexusConfig> {
    let mut cfg = NexusConfig::new(url, consumer.to_string());
    cfg.token = match args.nexus_token.clone() {
        Some(t) => Some(t),
        None => nexus_token_from_files(file.token_file.as_deref(), data_dir)?,
    };
    cfg.node_name = node_name.to_string();
    cfg.lease = lease;
    Ok(cfg)
}

/// The websocket transport's settings: the URL from `--ws-url`/the config, else derived from the
/// nexus URL; the token as for nexus (the websocket token file first).
#[allow(clippy::too_many_arguments)]
pub(super) fn websocket_config(
    args: &WorkArgs,
    ws_file: &WebSocketSection,
    nexus_file: &NexusSection,
    nexus_url: Option<&str>,
    consumer: &str,
    node_name: &str,
    lease: Duration,
    data_dir: &Path,
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
            data_dir,
        )?,
    };
    let mut cfg = WebSocketConfig::new(url, consumer.to_string());
    cfg.token = token;
    cfg.node_name = node_name.to_string();
    cfg.lease = lease;
    Ok(cfg)
}

/// How `auto` probes and switches, from the flags and `transports.auto`.
pub(super) fn auto_config(args: &WorkArgs, a: Option<&AutoSection>) -> anyhow::Result<AutoConfig> {
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

/// The NATS settings: defaults < `transports.nats` < `CITADEL_NATS_*` < flags.
pub(super) fn nats_config(
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

/// Connects with `connect`, retrying with backoff while the server is away (any error that is not
/// retryable, a configuration error above all, stops at once).
pub(super) async fn connect_retrying<S, F, Fut>(what: &str, mut connect: F) -> anyhow::Result<S>
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
    crate::nexus::read_token(&crate::nexus::data_dir(data_dir))
}
