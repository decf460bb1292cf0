//! Starting the terminal service for `citadel work` when the manifest's
//! `permissions.console.enabled` is true: its settings (defaults < manifest < environment <
//! flags), this node's organization (`DATA_DIR/identity.json`'s `org_id`, else `default`), and
//! the control plane its token hashes come from (the one the node was enrolled with, else
//! `transports.nexus`, else the embedded one) with the node's credential. It only resolves and
//! starts; the service itself is [`crate::terminal`].

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::{duration, WorkArgs};
use crate::config::{self, ConsoleSection, FileConfig};
use crate::terminal::auth::{HttpFetcher, RefreshPolicy, TokenCache};
use crate::terminal::{PasscodeGate, TerminalConfig};

/// Where the token hashes come from: a control plane's URL and the node's credential for it.
#[derive(Debug, Clone)]
pub(super) struct Plane {
    pub url: String,
    pub credential: String,
}

/// Starts the service when the console permission is on; `None` when it is off.
pub(super) async fn start(
    args: &WorkArgs,
    file: &FileConfig,
    data_dir: &Path,
    embedded: Option<Plane>,
) -> anyhow::Result<Option<crate::terminal::Running>> {
    let console = &file.permissions.console;
    if !console.enabled.unwrap_or(false) {
        return Ok(None);
    }
    let org = org_id(data_dir);
    let plane = plane(file, data_dir)?.or(embedded).context(
        "permissions.console is enabled but this node has no control plane to check terminal \
         tokens against (run `citadel init`, or configure transports.nexus)",
    )?;
    let config = resolve(args, console, data_dir, &org)?;
    let fetcher = HttpFetcher::new(&plane.url, &org, &plane.credential)?;
    let tokens = TokenCache::new(&org, Arc::new(fetcher), RefreshPolicy::default());
    let running = crate::terminal::start(config, tokens).await?;
    eprintln!(
        "citadel: terminal on ws://{}/terminal (tokens from {})",
        running.addr,
        crate::format::redact(&plane.url)
    );
    Ok(Some(running))
}

/// The organization in `identity.json`, else `default`.
fn org_id(data_dir: &Path) -> String {
    std::fs::read(data_dir.join("identity.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["org_id"].as_str().map(str::to_string))
        .filter(|o| !o.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn read_secret(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the node credential {}", path.display()))?;
    Ok(text.trim().to_string())
}

/// The control plane this node was enrolled with (identity.json's `control_plane`) and the
/// node's credential for it (DATA_DIR/node-token); `None` when it was not enrolled.
pub(super) fn enrolled_plane(data_dir: &Path) -> anyhow::Result<Option<Plane>> {
    let enrolled = std::fs::read(data_dir.join("identity.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["control_plane"].as_str().map(str::to_string));
    match enrolled.filter(|u| !u.is_empty()) {
        Some(url) => {
            let credential = read_secret(&data_dir.join("node-token"))?;
            Ok(Some(Plane { url, credential }))
        }
        None => Ok(None),
    }
}

/// The enrolled control plane, else `transports.nexus`.
fn plane(file: &FileConfig, data_dir: &Path) -> anyhow::Result<Option<Plane>> {
    if let Some(p) = enrolled_plane(data_dir)? {
        return Ok(Some(p));
    }
    let Some(nexus) = file.transports.nexus.as_ref() else {
        return Ok(None);
    };
    match (&nexus.url, &nexus.token_file) {
        (Some(url), Some(token)) => Ok(Some(Plane {
            url: url.clone(),
            credential: read_secret(token)?,
        })),
        _ => Ok(None),
    }
}

fn default_of(key: &str) -> &'static str {
    config::default_of(key)
}

/// The service's settings from the flags, environment and manifest.
fn resolve(
    args: &WorkArgs,
    c: &ConsoleSection,
    data_dir: &Path,
    org: &str,
) -> anyhow::Result<TerminalConfig> {
    let listen = args
        .terminal_listen
        .clone()
        .or(c.listen.clone())
        .unwrap_or_else(|| default_of("permissions.console.listen").to_string());
    let listen: SocketAddr = listen.parse().with_context(|| {
        format!("setting `permissions.console.listen`: `{listen}` is not HOST:PORT")
    })?;
    let mut t = TerminalConfig::new(listen, org, data_dir.join("workspace"));
    if let Some(n) = c.max_connections {
        t.max_connections = n.max(1);
    }
    t.idle_timeout = duration(
        "console.idle_timeout",
        None,
        c.idle_timeout.as_ref(),
        t.idle_timeout,
    )?;
    t.session_ttl = duration(
        "console.session_ttl",
        None,
        c.session_ttl.as_ref(),
        t.session_ttl,
    )?;
    if let Some(r) = c.rate_per_second {
        anyhow::ensure!(
            r > 0.0,
            "setting `permissions.console.rate_per_second`: must be above 0"
        );
        t.rate.per_second = r;
    }
    if let Some(b) = c.rate_burst {
        anyhow::ensure!(
            b >= 1.0,
            "setting `permissions.console.rate_burst`: must be at least 1"
        );
        t.rate.burst = b;
    }
    t.trusted_proxies = c
        .trusted_proxies
        .iter()
        .flatten()
        .map(|p| {
            p.parse::<IpAddr>()
                .with_context(|| format!("trusted proxy `{p}`"))
        })
        .collect::<anyhow::Result<_>>()?;
    t.allowed_origins = c.allowed_origins.clone().unwrap_or_default();
    t.passcode = PasscodeGate {
        required: c.passcode_required.unwrap_or(false),
        hash: c.passcode_hash.clone().filter(|h| !h.is_empty()),
    };
    if let Some(m) = &c.tmux {
        t.tmux = m.parse().context("setting `permissions.console.tmux`")?;
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminal::limits::RateConfig;

    /// The table's defaults are the ones the service uses.
    #[test]
    fn the_table_states_the_service_defaults() {
        let t = TerminalConfig::new(
            default_of("permissions.console.listen").parse().unwrap(),
            "o",
            "/w".into(),
        );
        let d = |k| crate::format::parse_duration(default_of(k)).unwrap();
        assert_eq!(d("permissions.console.idle_timeout"), t.idle_timeout);
        assert_eq!(d("permissions.console.session_ttl"), t.session_ttl);
        let r = RateConfig::default();
        assert_eq!(
            default_of("permissions.console.rate_per_second")
                .parse::<f64>()
                .unwrap(),
            r.per_second
        );
        assert_eq!(
            default_of("permissions.console.rate_burst")
                .parse::<f64>()
                .unwrap(),
            r.burst
        );
        assert_eq!(
            default_of("permissions.console.max_connections")
                .parse::<usize>()
                .unwrap(),
            t.max_connections
        );
    }
}
