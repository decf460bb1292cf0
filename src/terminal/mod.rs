//! The terminal service: a shell on a PTY over a WebSocket, for the users the control plane
//! issued terminal tokens to. It is a remote shell, so the worker starts it only when the
//! manifest's `permissions.console.enabled` is true, on its own listener (loopback by default).
//! [`server`] admits requests (rate limit, origin, token, passcode, connection cap) and serves
//! the routes; [`session`] bridges one socket to one shell; [`pty`] runs the shell, [`tmux`]
//! keeps it across connections when tmux is installed; [`auth`] is the token cache; [`limits`]
//! the pure admission decisions; [`frames`] the wire format. This module holds the settings; it
//! must never log a token or a passcode.

pub mod auth;
pub mod frames;
pub mod limits;
pub mod pty;
pub mod server;
pub mod session;
pub mod tmux;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use server::{start, Running};

/// The default listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7860";

/// Whether sessions live in tmux.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmuxMode {
    /// tmux when it is installed, else a bare shell.
    Auto,
    /// Always a bare shell.
    Off,
    /// tmux, or the service does not start.
    Required,
}

impl std::str::FromStr for TmuxMode {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "off" | "false" => Ok(Self::Off),
            "on" | "true" | "required" => Ok(Self::Required),
            o => anyhow::bail!("`{o}`: use auto, off or required"),
        }
    }
}

/// The passcode gate: when required, a request must also carry the passcode whose hex SHA-256
/// is `hash`; required with no hash configured, every request is refused (`passcode_not_set`).
#[derive(Debug, Clone, Default)]
pub struct PasscodeGate {
    pub required: bool,
    pub hash: Option<String>,
}

/// Everything the service runs with.
#[derive(Debug, Clone)]
pub struct TerminalConfig {
    pub listen: SocketAddr,
    /// This node's organization: tokens of another one are refused.
    pub org_id: String,
    pub max_connections: usize,
    pub rate: limits::RateConfig,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpAddr>,
    /// Browser origins allowed besides localhost.
    pub allowed_origins: Vec<String>,
    pub idle_timeout: Duration,
    /// How often idle connections are looked for.
    pub idle_check: Duration,
    pub passcode: PasscodeGate,
    /// Where shells start (created when missing).
    pub workspace: PathBuf,
    pub tmux: TmuxMode,
    /// The tmux socket name (`tmux -L`).
    pub tmux_socket: String,
    /// Detached tmux sessions idle this long are ended.
    pub session_ttl: Duration,
    /// How often the reaper looks.
    pub reap_every: Duration,
}

impl TerminalConfig {
    /// The defaults, listening on `listen` for `org_id`, shells in `workspace`.
    pub fn new(listen: SocketAddr, org_id: &str, workspace: PathBuf) -> Self {
        Self {
            listen,
            org_id: org_id.to_string(),
            max_connections: 10,
            rate: limits::RateConfig::default(),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            idle_timeout: Duration::from_secs(30 * 60),
            idle_check: Duration::from_secs(60),
            passcode: PasscodeGate::default(),
            workspace,
            tmux: TmuxMode::Auto,
            tmux_socket: "citadel".into(),
            session_ttl: Duration::from_secs(24 * 3600),
            reap_every: Duration::from_secs(60),
        }
    }
}
