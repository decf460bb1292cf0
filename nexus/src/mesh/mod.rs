//! The mesh's coordination and relay on the control plane (docs/mesh.md): a node registers its
//! public key and gets its address (`POST /api/fabric/mesh/register`), watches its
//! organization's network map by long-poll (`GET /api/fabric/mesh/map?since=V`), and sends and
//! receives WireGuard datagrams through the relay (`GET /api/fabric/mesh/relay`). Only a node's
//! own credential may call them (the admin token is not a node: 403), and a node sees and reaches
//! only its own organization. This module owns the routes and who may call them; the records
//! are [`map`], the addresses [`ipam`], the forwarding [`relay`], the plane's own membership of
//! each organization's mesh [`member`] (what the console's terminal dials through). It must never show one
//! organization's nodes to another, and never log a credential.

pub mod ipam;
mod map;
pub mod member;
pub mod metrics;
mod relay;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use citadel_transports::control_plane::mesh_wire::{
    NetworkMap, RegisterRequest, Registration, MAX_FRAME, MESH_PREFIX,
};
use serde::Deserialize;

use super::api::{principal, REVOKED};
use super::auth::Principal;
use super::common::{parse, ApiError, ApiResult, AppState, Body};
use super::store::{now_ms, StoreError};
use map::{RegisterError, Registry};

/// The longest a map request waits for a change.
pub const MAP_WAIT: Duration = Duration::from_secs(25);

#[derive(Debug)]
pub(crate) struct MeshState {
    app: Arc<AppState>,
    registry: Registry,
    hub: relay::Hub,
    members: member::Members,
}

type St = State<Arc<MeshState>>;

/// The mesh of a control plane: its routes, and its members for the console's terminal.
#[derive(Debug, Clone)]
pub struct MeshPlane(Arc<MeshState>);

impl MeshPlane {
    /// Loads the registry from the store; member keys live in `dir/mesh`.
    pub fn open(app: Arc<AppState>, dir: &Path) -> anyhow::Result<Self> {
        let registry = Registry::open(
            app.store.tree("mesh_keys")?,
            app.store.tree("mesh_nodes")?,
            now_ms(),
        )
        .map_err(|e| anyhow::anyhow!("loading the mesh registry: {e}"))?;
        let state = Arc::new(MeshState {
            app,
            registry,
            hub: relay::Hub::default(),
            members: member::Members::new(dir.join("mesh")),
        });
        Ok(Self(state))
    }

    /// The mesh routes, merged beside the API of [`super::api::router`].
    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/fabric/mesh/register", post(register))
            .route("/api/fabric/mesh/map", get(map))
            .route("/api/fabric/mesh/relay", get(relay))
            .with_state(self.0.clone())
    }

    /// The plane's member of `org`, started (and its registration durable) if it was not.
    pub async fn member(&self, org: &str) -> Result<Arc<member::Member>, String> {
        let (m, fresh) = member::ensure(&self.0, org)?;
        self.0.app.store.flush().await.map_err(|e| e.to_string())?;
        if fresh {
            // The nodes' map long-polls wake on the change; a handshake sent before a node has
            // the new map is dropped there and tried again only after WireGuard's 5 s.
            tokio::time::sleep(member::SETTLE).await;
        }
        Ok(m)
    }
}

/// Takes revocations and re-approvals into the maps: a node stays while it holds a live
/// credential of its organization; the plane's members always do.
fn reconcile(s: &MeshState) {
    let live: HashMap<String, String> = (s.app.credentials.list().into_iter())
        .filter(|c| !c.is_revoked())
        .map(|c| (c.node_id, c.org))
        .collect();
    s.registry
        .reconcile(|n, org| member::is_member(n) || live.get(n).is_some_and(|o| o == org));
}

/// The bearer token of a request.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The node that made a request: (node id, organization); 401 without a live credential, 403
/// for the admin token.
fn node_caller(app: &AppState, headers: &HeaderMap) -> ApiResult<(String, String)> {
    let who = bearer(headers)
        .and_then(|t| principal(app, t))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, REVOKED.into()))?;
    match who.node_id() {
        Some(id) => Ok((id.to_string(), who.org.clone())),
        None => Err(ApiError(
            StatusCode::FORBIDDEN,
            "the admin token is not a node: the mesh takes a node's own credential".into(),
        )),
    }
}

/// `POST /api/fabric/mesh/register {"public_key": BASE64}`: the caller's address, durable
/// before the answer. 400 for a malformed key, 409 for a key another node registered.
async fn register(State(s): St, headers: HeaderMap, body: Body) -> ApiResult<Json<Registration>> {
    let (node, org) = node_caller(&s.app, &headers)?;
    let req: RegisterRequest = parse(body)?;
    let name = s
        .app
        .credentials
        .list()
        .into_iter()
        .find(|c| c.node_id == node)
        .map(|c| c.name)
        .unwrap_or_default();
    let ip = s
        .registry
        .register(&node, &org, &name, req.public_key, now_ms())
        .map_err(|e| match e {
            RegisterError::KeyTaken | RegisterError::Full(_) => ApiError::conflict(e.to_string()),
            RegisterError::Storage(m) => StoreError::Storage(std::io::Error::other(m)).into(),
        })?;
    s.app.store.wrote();
    s.app.store.flush().await?;
    tracing::info!(node_id = %node, %org, mesh_ip = %ip, public_key = %req.public_key, "mesh key registered");
    Ok(Json(Registration {
        node_id: node,
        org_id: org,
        mesh_ip: ip,
        prefix: MESH_PREFIX.to_string(),
    }))
}

#[derive(Debug, Deserialize)]
struct MapQuery {
    /// The version the caller has: the answer waits while the map is still at it.
    since: Option<u64>,
    /// Seconds to wait at most (default and cap: [`MAP_WAIT`]).
    wait: Option<f64>,
}

/// `GET /api/fabric/mesh/map[?since=V][&wait=S]`: the caller's map, at once when its version is
/// not `since`, else when it changes or the wait ends (then the same map again).
async fn map(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<MapQuery>,
) -> ApiResult<Json<NetworkMap>> {
    let (node, org) = node_caller(&s.app, &headers)?;
    let wait = q
        .wait
        .filter(|w| w.is_finite() && *w >= 0.0)
        .map_or(MAP_WAIT, |w| {
            Duration::from_secs_f64(w.min(MAP_WAIT.as_secs_f64()))
        });
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = s.registry.subscribe();
    let mut revoked = s.app.credentials.subscribe_revocations();
    loop {
        reconcile(&s);
        let map = s.registry.map_for(&node, &org).ok_or_else(|| {
            ApiError::not_found(
                "this node has no mesh key registered: POST /api/fabric/mesh/register first",
            )
        })?;
        if q.since != Some(map.version) || tokio::time::Instant::now() >= deadline {
            return Ok(Json(map));
        }
        tokio::select! {
            _ = changed.changed() => {}
            _ = revoked.changed() => {}
            () = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `GET /api/fabric/mesh/relay`: the caller's relay WebSocket, once it has registered a key.
async fn relay(
    State(s): St,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (node, org) = match node_caller(&s.app, &headers) {
        Ok(who) => who,
        Err(e) => return e.into_response(),
    };
    if s.registry.key_of(&node).is_none() {
        return ApiError::conflict(
            "this node has no mesh key registered: POST /api/fabric/mesh/register first",
        )
        .into_response();
    }
    let token = bearer(&headers).unwrap_or_default().to_string();
    match ws {
        Ok(ws) => ws
            .max_message_size(MAX_FRAME)
            .on_upgrade(move |socket| relay::session(s, Principal::node(node, org), token, socket)),
        Err(e) => e.into_response(),
    }
}
