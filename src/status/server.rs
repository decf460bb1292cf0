//! The status server: a small read-only HTTP server, on loopback unless configured otherwise,
//! serving `/healthz` (the process answers), `/readyz` (the transport is healthy and the worker
//! is consuming: 200, else 503 with the reasons), `/status` (the status message as JSON) and
//! `/metrics` (Prometheus text), and to clients on this machine the mesh routes of [`super::mesh`]
//! (`citadel mesh`, `citadel terminal NODE`). Its address goes to `DATA_DIR/status.addr` for
//! `citadel status`. The read-only routes are also served on the node's mesh address
//! ([`Running::handle`]). It has no endpoint that changes anything, so it needs no token; it must
//! never serve a secret.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::NodeStatus;
use citadel_nexus::Listen;

/// The first port tried on loopback.
pub const DEFAULT_PORT: u16 = 7412;
/// The file holding the address of the running worker's status server.
pub const ADDR_FILE: &str = "status.addr";

/// Where the status server listens (`--status-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusListen {
    /// No status server.
    Off,
    /// Loopback, [`DEFAULT_PORT`] or the next free port.
    Auto,
    Exact(SocketAddr),
}

impl std::str::FromStr for StatusListen {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim() {
            "off" | "none" | "false" => Ok(Self::Off),
            "" | "auto" | "on" => Ok(Self::Auto),
            other => other.parse().map(Self::Exact).with_context(|| {
                format!("`{other}` is not an address: use HOST:PORT (e.g. 127.0.0.1:7412), `auto` or `off`")
            }),
        }
    }
}

/// The address file in a data directory.
pub fn addr_file(data_dir: &Path) -> PathBuf {
    data_dir.join(ADDR_FILE)
}

/// A running status server.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    file: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<()>,
    status: Arc<NodeStatus>,
}

impl Running {
    /// What serves the read-only routes on more listeners (the node's mesh address) until the
    /// server stops; the mesh routes stay on loopback.
    pub fn handle(&self) -> crate::serve::Handle {
        let router = router(self.status.clone());
        crate::serve::Handle::new(router, self.stop.clone(), "status")
    }

    /// Stops serving and removes the address file.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.file);
        let _ = self.task.await;
    }
}

/// Binds as `listen` says and serves `status`, and the routes of the node's `mesh` (for the
/// CLI on this machine); `None` when off (or `auto` found no free port).
pub async fn start(
    listen: StatusListen,
    status: Arc<NodeStatus>,
    mesh: super::mesh::Mesh,
) -> anyhow::Result<Option<Running>> {
    let bind = match listen {
        StatusListen::Off => return Ok(None),
        StatusListen::Auto => Listen::LoopbackFrom(DEFAULT_PORT),
        StatusListen::Exact(a) => Listen::Exact(a),
    };
    let listener = match bind.bind().await {
        Ok(l) => l,
        // `auto` is best effort: a worker runs without its status server rather than not at all.
        Err(e) if listen == StatusListen::Auto => {
            tracing::warn!(error = %format!("{e:#}"), "no status server: no free loopback port");
            return Ok(None);
        }
        Err(e) => return Err(e.context("starting the status server")),
    };
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the status server listens beyond loopback: anyone who can reach it reads this node's status");
    }
    let file = addr_file(&status.identity.data_dir);
    std::fs::write(&file, format!("{addr}\n"))
        .with_context(|| format!("writing {}", file.display()))?;
    let stop = CancellationToken::new();
    let routes = router(status.clone()).merge(super::mesh::router(mesh));
    let task = crate::serve::spawn(listener, routes, stop.clone(), "status");
    tracing::info!(%addr, "status server listening");
    Ok(Some(Running {
        addr,
        file,
        stop,
        task,
        status,
    }))
}

/// The routes.
pub fn router(status: Arc<NodeStatus>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status_json))
        .route("/metrics", get(metrics))
        .with_state(status)
}

type St = State<Arc<NodeStatus>>;

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): St) -> Response {
    match s.readiness().await {
        Ok(()) => Json(json!({"ready": true})).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reasons": reasons})),
        )
            .into_response(),
    }
}

async fn status_json(State(s): St) -> Json<serde_json::Value> {
    Json(s.message().await)
}

async fn metrics(State(s): St) -> Response {
    let platform = s.platform().await;
    let text = super::prometheus::render(&super::prometheus::Snapshot {
        counters: s.counters(),
        route: s.source().route(),
        platform: &platform,
        node_name: &s.identity.node_name,
        uptime_s: s.uptime().as_secs_f64(),
        routing: s.routing(),
        claims: s.source().route_stats(),
    });
    (
        [(header::CONTENT_TYPE, super::prometheus::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_settings_parse() {
        assert_eq!("off".parse::<StatusListen>().unwrap(), StatusListen::Off);
        assert_eq!("auto".parse::<StatusListen>().unwrap(), StatusListen::Auto);
        assert_eq!(
            "127.0.0.1:9000".parse::<StatusListen>().unwrap(),
            StatusListen::Exact("127.0.0.1:9000".parse().unwrap())
        );
        let err = "localhost".parse::<StatusListen>().unwrap_err();
        assert!(format!("{err:#}").contains("HOST:PORT"));
    }
}
