//! The status server's mesh routes, for the CLI on this machine: `GET /mesh/status` (own
//! address, peers, path, bytes, last handshake), `GET /mesh/ping?peer=NAME` (a round trip
//! through the tunnel) and `GET /mesh/connect?peer=NAME&port=P` with `Upgrade:
//! citadel-mesh-tcp`, answered `101 Switching Protocols` and then raw bytes to and from the
//! peer's TCP port over the mesh (`citadel terminal NODE` runs its WebSocket over it). The
//! node's mesh itself stands behind [`MeshControl`]. These routes answer loopback clients only
//! and are never served on the mesh listener, so a peer cannot use this node as a hop; they must
//! never expose the node's private key.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

/// The `Upgrade` protocol of `/mesh/connect`.
pub const UPGRADE: &str = "citadel-mesh-tcp";
/// How long `/mesh/ping` waits for the answer unless told otherwise.
pub const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// A byte stream to a peer's port over the mesh.
pub trait MeshIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> MeshIo for T {}

/// Why a mesh request failed; each maps to one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum MeshFailure {
    /// The mesh is enabled but not up yet (e.g. the control plane is away).
    #[error("the mesh is not up yet: {0}")]
    Starting(String),
    /// No peer of that name or address in this node's map.
    #[error("no peer `{0}` on this node's mesh")]
    UnknownPeer(String),
    /// The peer did not answer in time (a retry may help).
    #[error("{0}")]
    Timeout(String),
    /// The peer answered with a refusal or the stream broke.
    #[error("{0}")]
    Failed(String),
}

impl MeshFailure {
    fn status(&self) -> StatusCode {
        match self {
            Self::Starting(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::UnknownPeer(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::Failed(_) => StatusCode::BAD_GATEWAY,
        }
    }
}

/// What the status server asks of the node's mesh.
#[async_trait::async_trait]
pub trait MeshControl: Send + Sync + std::fmt::Debug {
    /// The mesh as JSON: `state` (`starting` with `error`, or `up`), `mesh_ip`, `peers`.
    fn status(&self) -> Value;
    /// A round trip through the tunnel to `peer` (a name or a mesh address).
    async fn ping(&self, peer: &str, timeout: Duration) -> Result<Duration, MeshFailure>;
    /// A TCP stream to `peer`'s `port` over the mesh.
    async fn connect(&self, peer: &str, port: u16) -> Result<Box<dyn MeshIo>, MeshFailure>;
}

/// The node's mesh, or `None` when it is off.
pub type Mesh = Option<Arc<dyn MeshControl>>;

/// The mesh routes (answering 503 "the mesh is off" when it is).
pub fn router(mesh: Mesh) -> Router {
    Router::new()
        .route("/mesh/status", get(status))
        .route("/mesh/ping", get(ping))
        .route("/mesh/connect", get(connect))
        .with_state(mesh)
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"error": message, "status": status.as_u16()});
    (status, Json(body)).into_response()
}

/// The mesh, when it is on and the client is on this machine; else the refusal.
fn admit(
    mesh: Mesh,
    client: SocketAddr,
) -> Result<Arc<dyn MeshControl>, (StatusCode, &'static str)> {
    if !client.ip().is_loopback() {
        let msg = "the mesh routes answer clients on this machine only";
        return Err((StatusCode::FORBIDDEN, msg));
    }
    mesh.ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        "the mesh is off on this node (mesh.enabled, --mesh; it is on by default once the node \
         is enrolled with a control plane)",
    ))
}

fn failure(e: &MeshFailure) -> Response {
    error(e.status(), &e.to_string())
}

async fn status(
    State(mesh): State<Mesh>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
) -> Response {
    match admit(mesh, client) {
        Ok(m) => Json(m.status()).into_response(),
        Err((s, m)) => error(s, m),
    }
}

#[derive(Debug, Deserialize)]
struct PingQuery {
    peer: String,
    /// Milliseconds to wait for the answer.
    timeout_ms: Option<u64>,
}

async fn ping(
    State(mesh): State<Mesh>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<PingQuery>,
) -> Response {
    let m = match admit(mesh, client) {
        Ok(m) => m,
        Err((s, m)) => return error(s, m),
    };
    let timeout = q.timeout_ms.map_or(PING_TIMEOUT, Duration::from_millis);
    match m.ping(&q.peer, timeout).await {
        Ok(rtt) => Json(json!({
            "peer": q.peer,
            "rtt_ms": rtt.as_secs_f64() * 1000.0,
        }))
        .into_response(),
        Err(e) => failure(&e),
    }
}

#[derive(Debug, Deserialize)]
struct ConnectQuery {
    peer: String,
    port: u16,
}

/// Dials first (so a refusal is an ordinary HTTP error), then switches protocols and copies
/// bytes both ways until either side closes.
async fn connect(
    State(mesh): State<Mesh>,
    ConnectInfo(client): ConnectInfo<SocketAddr>,
    Query(q): Query<ConnectQuery>,
    mut req: Request,
) -> Response {
    let m = match admit(mesh, client) {
        Ok(m) => m,
        Err((s, m)) => return error(s, m),
    };
    let asked = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok());
    if !asked.is_some_and(|u| u.eq_ignore_ascii_case(UPGRADE)) {
        let msg = format!("send `Connection: Upgrade` and `Upgrade: {UPGRADE}`");
        return error(StatusCode::UPGRADE_REQUIRED, &msg);
    }
    let mut stream = match m.connect(&q.peer, q.port).await {
        Ok(s) => s,
        Err(e) => return failure(&e),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let (peer, port) = (q.peer, q.port);
    tokio::spawn(async move {
        let mut local = match on_upgrade.await {
            Ok(u) => hyper_util::rt::TokioIo::new(u),
            Err(e) => return tracing::debug!(error = %e, "the mesh connect upgrade failed"),
        };
        let copied = tokio::io::copy_bidirectional(&mut local, &mut stream).await;
        tracing::debug!(%peer, port, ?copied, "a mesh stream ended");
    });
    let mut resp = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static(UPGRADE));
    resp
}
