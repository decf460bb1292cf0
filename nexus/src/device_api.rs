//! The HTTP side of device authorization (docs/wire-format.md#device-authorization): `POST /api/fabric/device-auth/start` and
//! `/token` for nodes (no bearer token: a node has none yet; the device code is the secret),
//! `POST /api/v1/device-auth/approve` (with an optional `org`) and `GET /api/v1/device-auth/pending`
//! for approvers (admin token), the `/device` approval page, and the admin's credential endpoints
//! (`GET /api/v1/credentials`, `POST /api/v1/credentials/{node}/revoke`). An approved node receives
//! its own credential (`credentials.rs`), never the admin token; it is recorded in the node list
//! when it is approved. It must never log a device code or a token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::auth::{valid_org, DEFAULT_ORG};
use super::common::{parse, ApiError, ApiResult, AppState, Body};
use super::credentials::{CredentialError, NodeCredential};
use super::device::{ApproveError, Poll, StartRequest};
use super::store::{now_ms, NodeRecord};

type St = State<Arc<AppState>>;

/// The routes a node calls while it has no credentials.
pub fn public() -> Router<Arc<AppState>> {
    Router::new()
        .route("/api/fabric/device-auth/start", post(start))
        .route("/api/fabric/device-auth/token", post(token))
        .route("/device", get(page))
}

/// The approver's routes (nested under `/api/v1`, behind the bearer token).
pub fn admin() -> Router<Arc<AppState>> {
    Router::new()
        .route("/device-auth/approve", post(approve))
        .route("/device-auth/pending", get(pending))
        .route("/credentials", get(credentials))
        .route("/credentials/{node}/revoke", post(revoke))
}

async fn start(State(app): St, headers: HeaderMap, body: Body) -> ApiResult<Response> {
    let req: StartRequest = parse(body)?;
    if req.client_id.is_empty() || req.hostname.is_empty() || req.hostname.len() > 253 {
        return Err(ApiError::bad(
            "`client_id` and `hostname` (1 to 253 characters) are required",
        ));
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let Some(started) = app.device.start(&req, &format!("http://{host}")) else {
        return Ok(ApiError::unavailable(
            "too many device authorizations are waiting; try again in a few minutes",
        )
        .into_response());
    };
    tracing::info!(hostname = %req.hostname, user_code = %started.user_code, "device authorization requested");
    Ok(Json(started).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    device_code: String,
    grant_type: String,
}

const GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

async fn token(State(app): St, body: Body) -> ApiResult<Response> {
    let req: TokenRequest = parse(body)?;
    if req.grant_type != GRANT {
        return Ok(oauth_error("unsupported_grant_type"));
    }
    match app.device.poll(&req.device_code) {
        Poll::Approved {
            node_id,
            node_name,
            org,
        } => {
            let credential = app
                .credentials
                .issue(&node_id, &node_name, &org, now_ms())
                .map_err(credential_error)?;
            app.store.heartbeat(NodeRecord {
                id: node_id.clone(),
                name: node_name.clone(),
                ip_address: String::new(),
                status: "approved".into(),
                last_seen_ms: now_ms(),
                report: None,
            })?;
            app.store.wrote();
            app.store.flush().await?;
            tracing::info!(%node_id, %org, "device authorization completed; node credential issued");
            Ok(Json(json!({
                "access_token": credential,
                "token_type": "Bearer",
                "node_id": node_id,
                "node_name": node_name,
                "org": org,
            }))
            .into_response())
        }
        other => Ok(oauth_error(other.error_code().unwrap_or("invalid_grant"))),
    }
}

fn oauth_error(code: &str) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": code }))).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    user_code: String,
    #[serde(default = "yes")]
    approve: bool,
    /// The organization the node joins (default `default`).
    #[serde(default)]
    org: Option<String>,
}

fn yes() -> bool {
    true
}

async fn approve(State(app): St, body: Body) -> ApiResult<Json<serde_json::Value>> {
    let b: ApproveBody = parse(body)?;
    let org = b.org.unwrap_or_else(|| DEFAULT_ORG.to_string());
    valid_org(&org).map_err(ApiError::bad)?;
    let view = app
        .device
        .decide(&b.user_code, b.approve.then_some(org.as_str()))
        .map_err(|e| match e {
            ApproveError::Unknown(_) => ApiError::not_found(e.to_string()),
            ApproveError::Decided(_) => ApiError::conflict(e.to_string()),
        })?;
    tracing::info!(user_code = %view.user_code, hostname = %view.hostname, approved = b.approve, %org, "device authorization decided");
    Ok(Json(json!({
        "user_code": view.user_code,
        "hostname": view.hostname,
        "approved": b.approve,
        "org": b.approve.then_some(org),
    })))
}

fn credential_error(e: CredentialError) -> ApiError {
    match e {
        CredentialError::Unknown(_) => ApiError::not_found(e.to_string()),
        CredentialError::Storage(_) => {
            tracing::error!(error = %e, "storing a node credential");
            ApiError::unavailable(e.to_string())
        }
    }
}

/// A node with its credential's state and when it was last heard from.
fn node_view(app: &AppState, c: NodeCredential) -> serde_json::Value {
    let seen = app.store.nodes().ok().and_then(|nodes| {
        nodes
            .into_iter()
            .find(|n| n.id == c.node_id)
            .map(|n| n.last_seen_ms)
    });
    json!({
        "node_id": c.node_id,
        "name": c.name,
        "org": c.org,
        "state": if c.is_revoked() { "revoked" } else { "active" },
        "issued_at": super::store::rfc3339_ms(c.issued_ms),
        "revoked_at": c.revoked_ms.map(super::store::rfc3339_ms),
        "last_seen": seen.map(super::store::rfc3339_ms),
    })
}

/// `GET /api/v1/credentials`: every approved node, its organization and its credential's state.
async fn credentials(State(app): St) -> Json<serde_json::Value> {
    let nodes: Vec<_> = app
        .credentials
        .list()
        .into_iter()
        .map(|c| node_view(&app, c))
        .collect();
    Json(json!({ "nodes": nodes }))
}

/// `POST /api/v1/credentials/{node}/revoke`: the node's next request is refused (401) and its
/// WebSocket closed; durable before the answer.
async fn revoke(State(app): St, Path(node): Path<String>) -> ApiResult<Json<serde_json::Value>> {
    let c = app
        .credentials
        .revoke(&node, now_ms())
        .map_err(credential_error)?;
    app.store.wrote();
    app.store.flush().await?;
    tracing::info!(node_id = %node, org = %c.org, "node credential revoked");
    Ok(Json(node_view(&app, c)))
}

async fn pending(State(app): St) -> Json<serde_json::Value> {
    Json(json!({ "pending": app.device.waiting() }))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>citadel: approve a node</title>
<style>body{font-family:sans-serif;max-width:32em;margin:3em auto}input{font-size:1.2em;margin:.3em 0;width:100%}button{font-size:1.1em;margin:.5em .5em 0 0}</style>
</head><body>
<h1>Approve a node</h1>
<p>A node ran <code>citadel init</code> and shows a code. Enter it with this control plane's token
(<code>DATA_DIR/nexus/token</code> on the control plane's machine) to let the node join.</p>
<form id="f"><label>Code<input id="code" autocomplete="off" placeholder="BCDF-GHJK"></label>
<label>Control plane token<input id="token" type="password" autocomplete="off"></label>
<button type="submit" name="approve" value="1">Approve</button><button type="button" id="deny">Deny</button></form>
<p id="out" role="status"></p>
<script>
const q = new URLSearchParams(location.search);
document.getElementById('code').value = q.get('code') || '';
async function decide(approve) {
  const out = document.getElementById('out');
  const r = await fetch('/api/v1/device-auth/approve', {method: 'POST',
    headers: {'Content-Type': 'application/json', 'Authorization': 'Bearer ' + document.getElementById('token').value},
    body: JSON.stringify({user_code: document.getElementById('code').value, approve})});
  const b = await r.json().catch(() => ({}));
  out.textContent = r.ok ? (approve ? 'Approved: ' : 'Denied: ') + b.hostname : 'Refused: ' + (b.error || r.status);
}
document.getElementById('f').addEventListener('submit', e => { e.preventDefault(); decide(true); });
document.getElementById('deny').addEventListener('click', () => decide(false));
</script></body></html>
"#;
