//! The console's node terminal (docs/console.md#terminal): the page `/ui/nodes/{id}/terminal`
//! (xterm.js wired by `terminal.js`) and its WebSocket `/ui/nodes/{id}/terminal/ws`, which the
//! plane bridges to the node's own terminal service over the organization's mesh: it mints a
//! short-lived terminal token for the console in the node's organization, dials the node's mesh
//! address through the plane's member of that organization ([`crate::mesh::member`]), speaks
//! the node terminal's WebSocket protocol as a client and relays the frames both ways
//! unchanged; the token is revoked when the bridge ends. Admin sessions only (a read-only
//! session gets 403), the `Origin` must be the console's own, one bridge per session and node,
//! and every failure reaches the page as an `error` frame and a close. It must never put the
//! token in a page, a frame or a log.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::ws::{rejection::WebSocketUpgradeRejection, CloseFrame, Message, WebSocket};
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{middleware, Extension, Router};
use citadel_mesh::{MeshError, MeshStream};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::Deserialize;
use tokio_tungstenite::tungstenite::{self, protocol::frame::coding::CloseCode};

use super::views::Frame;
use super::{denied, render, same_origin, Ui, Viewer};
use crate::mesh::MeshPlane;
use crate::terminal_tokens;

/// The user id of the tokens the console mints.
pub const CONSOLE_USER: &str = "console-admin";
/// How long a minted token lives at most (it is revoked when the page closes).
pub const TOKEN_LIFETIME_S: u64 = 300;
/// The node terminal's port when its report names none.
pub const DEFAULT_PORT: u16 = 7860;
/// How long the bridge keeps trying while the node does not yet know the new token (its cache
/// refreshes on a miss at most once per 10 s).
const ADMIT_WITHIN: Duration = Duration::from_secs(12);
/// How long one dial over the mesh waits.
const DIAL_WITHIN: Duration = Duration::from_secs(8);

#[derive(Debug)]
struct Term {
    ui: Arc<Ui>,
    mesh: MeshPlane,
    /// The open bridges: (session, node).
    open: Mutex<HashSet<(String, String)>>,
}

type St = State<Arc<Term>>;

/// The terminal routes, behind the console's session gate.
pub(super) fn router<S: Clone + Send + Sync + 'static>(ui: Arc<Ui>, mesh: MeshPlane) -> Router<S> {
    let term = Arc::new(Term {
        ui: ui.clone(),
        mesh,
        open: Mutex::new(HashSet::new()),
    });
    Router::new()
        .route("/ui/nodes/{id}/terminal", get(page))
        .route("/ui/nodes/{id}/terminal/ws", get(socket))
        .layer(middleware::from_fn_with_state(ui, super::gate))
        .with_state(term)
}

#[derive(askama::Template)]
#[template(path = "terminal.html")]
struct TerminalPage {
    frame: Frame,
    id: String,
    name: String,
}

/// `GET /ui/nodes/{id}/terminal`.
async fn page(State(t): St, Extension(v): Extension<Viewer>, Path(id): Path<String>) -> Response {
    if let Some(r) = v.refused() {
        return r;
    }
    let Some(node) = (t.ui.app.store.nodes().unwrap_or_default())
        .into_iter()
        .find(|n| n.id == id)
    else {
        return (StatusCode::NOT_FOUND, "no such node").into_response();
    };
    render(&TerminalPage {
        frame: Frame::new(format!("Terminal {}", node.name), "nodes", Some(v.role)),
        id: node.id,
        name: node.name,
    })
}

#[derive(Debug, Deserialize)]
struct Size {
    cols: Option<u16>,
    rows: Option<u16>,
}

/// `GET /ui/nodes/{id}/terminal/ws`: 403 from another origin or for a read-only session; else
/// the bridge, whose failures come as an `error` frame and a close.
async fn socket(
    State(t): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
    Query(size): Query<Size>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !same_origin(&headers) {
        tracing::info!(node_id = %id, "console terminal from a foreign or missing origin refused");
        return denied("this terminal was not opened from the console's own page (Origin)");
    }
    if let Some(r) = v.refused() {
        return r;
    }
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return e.into_response(),
    };
    let size = (size.cols.unwrap_or(80), size.rows.unwrap_or(24));
    ws.on_upgrade(move |socket| async move {
        let key = (v.session, id.clone());
        if !t
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.clone())
        {
            fail(
                socket,
                "this console session already has a terminal open on this node",
            )
            .await;
            return;
        }
        bridge(&t, socket, &id, size).await;
        t.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&key);
    })
}

/// Where to reach a node's terminal: its credential's node id and organization, and the port
/// its report names; or why not. The console's node (its heartbeat's id and name) is the live
/// credential of that id, else the one live credential of that name.
fn target(t: &Term, id: &str) -> Result<(String, String, u16), String> {
    let record = (t.ui.app.store.nodes().unwrap_or_default().into_iter())
        .find(|n| n.id == id)
        .ok_or("no such node")?;
    let live: Vec<_> = (t.ui.app.credentials.list().into_iter())
        .filter(|c| !c.is_revoked())
        .collect();
    let by_id = live.iter().find(|c| c.node_id == id);
    let named: Vec<_> = live.iter().filter(|c| c.name == record.name).collect();
    let cred = match (by_id, named.as_slice()) {
        (Some(c), _) => c,
        (None, [c]) => *c,
        (None, []) => {
            return Err(
                "this node holds no live credential of the control plane: it cannot be reached"
                    .into(),
            )
        }
        (None, _) => return Err(format!("several enrolled nodes are named {}", record.name)),
    };
    let port = match record.report.as_ref().and_then(|r| r.get("terminal")) {
        Some(serde_json::Value::Null) => {
            return Err("the terminal is disabled on this node".into());
        }
        Some(v) => v.get("port").and_then(serde_json::Value::as_u64),
        None => None,
    };
    let port = port
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(DEFAULT_PORT);
    Ok((cred.node_id.clone(), cred.org.clone(), port))
}

/// One bridge, from the token's minting to its revocation.
async fn bridge(t: &Term, socket: WebSocket, id: &str, size: (u16, u16)) {
    let (node_id, org, port) = match target(t, id) {
        Ok(x) => x,
        Err(why) => return fail(socket, &why).await,
    };
    let member = match t.mesh.member(&org).await {
        Ok(m) => m,
        Err(e) => {
            return fail(
                socket,
                &format!("the control plane is not on the mesh: {e}"),
            )
            .await
        }
    };
    let Some(ip) = member.address_of(&node_id) else {
        let why = "this node is not on its organization's mesh (offline, or its mesh is off)";
        return fail(socket, why).await;
    };
    let app = &t.ui.app;
    let (token, token_id) =
        match terminal_tokens::issue(app, CONSOLE_USER, &org, TOKEN_LIFETIME_S).await {
            Ok(x) => x,
            Err(e) => return fail(socket, &format!("minting a terminal token: {}", e.1)).await,
        };
    match open(&member.mesh, ip, port, &token, size).await {
        Ok(node) => {
            tracing::info!(node_id = %id, %org, mesh_ip = %ip, "console terminal opened");
            relay(socket, node).await;
        }
        Err(why) => fail(socket, &why).await,
    }
    if let Err(e) = terminal_tokens::withdraw(app, &token_id).await {
        tracing::error!(id = %token_id, error = %e.1, "revoking the console's terminal token");
    }
    tracing::info!(node_id = %id, "console terminal closed");
}

type NodeWs = tokio_tungstenite::WebSocketStream<MeshStream>;

/// Opens the node's terminal WebSocket over the mesh, trying again while the node does not yet
/// know the token.
async fn open(
    mesh: &citadel_mesh::Mesh,
    ip: Ipv4Addr,
    port: u16,
    token: &str,
    (cols, rows): (u16, u16),
) -> Result<NodeWs, String> {
    let deadline = tokio::time::Instant::now() + ADMIT_WITHIN;
    let url = format!("ws://{ip}:{port}/terminal?token={token}&cols={cols}&rows={rows}");
    loop {
        let stream = match tokio::time::timeout(DIAL_WITHIN, mesh.dial(&ip.to_string(), port)).await {
            Err(_) | Ok(Err(MeshError::Timeout { .. })) => {
                return Err(format!(
                    "the node did not answer over the mesh within {DIAL_WITHIN:?} (offline?)"
                ))
            }
            Ok(Err(MeshError::Refused { .. })) => {
                return Err(format!(
                    "the node's terminal is not listening on its mesh address (port {port}): it is disabled on the node"
                ))
            }
            Ok(Err(e)) => return Err(format!("the mesh: {e}")),
            Ok(Ok(s)) => s,
        };
        let refused = match tokio_tungstenite::client_async(url.as_str(), stream).await {
            Ok((ws, _)) => return Ok(ws),
            Err(tungstenite::Error::Http(resp)) => refusal(&resp),
            Err(e) => return Err(format!("the node's terminal: {e}")),
        };
        let (status, message) = refused;
        let unknown = status == StatusCode::UNAUTHORIZED && message == "invalid token";
        if !unknown || tokio::time::Instant::now() >= deadline {
            return Err(format!(
                "the node refused the terminal: {status}: {message}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The status and the message of a node's refusal (`{"error", "reason"?}`).
fn refusal(resp: &tungstenite::http::Response<Option<Vec<u8>>>) -> (StatusCode, String) {
    let body = resp.body().as_deref().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let message = v["error"].as_str().unwrap_or("refused").to_string();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    (status, message)
}

/// An `error` frame (the node terminal's own shape) and a close.
async fn fail(mut socket: WebSocket, why: &str) {
    tracing::info!(error = %why, "console terminal refused");
    let frame = serde_json::json!({"type": "error", "error": why}).to_string();
    let _ = socket.send(Message::Text(frame.into())).await;
    let reason: String = why.chars().take(120).collect();
    let close = CloseFrame {
        code: 1011,
        reason: Utf8Bytes::from(reason),
    };
    let _ = socket.send(Message::Close(Some(close))).await;
}

/// Relays frames both ways unchanged until either side closes.
async fn relay(browser: WebSocket, node: NodeWs) {
    use tungstenite::Message as N;
    let (mut b_tx, mut b_rx) = browser.split();
    let (mut n_tx, mut n_rx) = node.split();
    loop {
        tokio::select! {
            m = b_rx.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    if n_tx.send(N::text(t.as_str())).await.is_err() { break }
                }
                Some(Ok(Message::Binary(b))) => {
                    if n_tx.send(N::binary(b)).await.is_err() { break }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    let _ = n_tx.send(N::Close(None)).await;
                    break;
                }
                Some(Ok(_)) => {}
            },
            m = n_rx.next() => match m {
                Some(Ok(N::Text(t))) => {
                    if b_tx.send(Message::Text(t.as_str().into())).await.is_err() { break }
                }
                Some(Ok(N::Binary(b))) => {
                    if b_tx.send(Message::Binary(b)).await.is_err() { break }
                }
                Some(Ok(N::Close(f))) => {
                    let close = f.map(|f| CloseFrame { code: u16::from(f.code), reason: f.reason.as_str().into() });
                    let _ = b_tx.send(Message::Close(close)).await;
                    break;
                }
                None | Some(Err(_)) => {
                    let close = CloseFrame { code: u16::from(CloseCode::Away), reason: "the connection to the node was lost".into() };
                    let _ = b_tx.send(Message::Close(Some(close))).await;
                    break;
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
