//! The WebSocket itself: connecting with the bearer token, the `hello`/`welcome` exchange, then
//! one loop per connection that reads frames (jobs into the inbox, cancel notices, answers to
//! requests), writes requests, grants credit as `next()` calls wait, pings every `ping` and gives
//! the connection up when nothing at all came for `dead_after`. Lost connections are remade with
//! the shared jittered [`Backoff`]. This module must never settle a job or choose what happens
//! to one.

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, info, warn};

use super::protocol::{ClientFrame, ServerFrame};
use super::{lock, Inner, SOURCE};
use crate::backoff::Backoff;
use crate::control_plane::from_record;
use crate::source::SourceError;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A connection that said hello, and the frames requests queue for it.
pub(crate) type Opened = (Ws, mpsc::UnboundedReceiver<Message>);

fn handshake_error(e: tungstenite::Error) -> SourceError {
    match e {
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Config(format!(
                    "the control plane refused the token ({status}): {body}"
                )),
                StatusCode::NOT_FOUND => SourceError::Config(format!(
                    "the server has no WebSocket job push ({status}); is it a citadel control plane? {body}"
                )),
                s if s.is_server_error() => {
                    SourceError::Busy(format!("control plane answered {status}: {body}"))
                }
                _ => SourceError::Broker(format!("control plane answered {status}: {body}")),
            }
        }
        tungstenite::Error::Url(e) => SourceError::Config(format!("the WebSocket URL: {e}")),
        other => SourceError::Unavailable(format!("control plane WebSocket: {other}")),
    }
}

/// Connects (without Nagle's delay: frames are small and latency matters) and completes
/// `hello` → `welcome`; from then on requests can be sent.
pub(crate) async fn open(inner: &Inner) -> Result<Opened, SourceError> {
    let cfg = &inner.cfg;
    let mut req = cfg
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| SourceError::Config(format!("the WebSocket URL {:?}: {e}", cfg.url)))?;
    if let Some(t) = &cfg.token {
        let v = HeaderValue::from_str(&format!("Bearer {t}"))
            .map_err(|_| SourceError::Config("the token is not a valid header value".into()))?;
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let timeout = cfg.request_timeout;
    let late = || {
        SourceError::Unavailable(format!(
            "the control plane did not answer within {timeout:?}"
        ))
    };
    let (mut ws, _) = tokio::time::timeout(
        timeout,
        tokio_tungstenite::connect_async_with_config(req, None, true),
    )
    .await
    .map_err(|_| late())?
    .map_err(handshake_error)?;
    let hello = ClientFrame::Hello {
        worker: cfg.worker_id.clone(),
        name: Some(cfg.node_name.clone()),
        lease_ms: Some(cfg.lease.as_millis() as u64),
    };
    let welcome = async {
        ws.send(Message::text(hello.to_text()))
            .await
            .map_err(handshake_error)?;
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg.map_err(handshake_error)? else {
                continue;
            };
            match serde_json::from_str::<ServerFrame>(&text) {
                Ok(ServerFrame::Welcome { .. }) => return Ok(()),
                Ok(ServerFrame::Error { status, error, .. }) => {
                    return Err(SourceError::Config(format!(
                        "the control plane refused the hello ({status}): {error}"
                    )))
                }
                _ => debug!(frame = %text, "ignoring a frame before the welcome"),
            }
        }
        Err(SourceError::Unavailable(
            "the control plane closed the WebSocket before its welcome".into(),
        ))
    };
    tokio::time::timeout(timeout, welcome)
        .await
        .map_err(|_| late())??;
    let (tx, rx) = mpsc::unbounded_channel::<Message>();
    inner.connected(tx);
    Ok((ws, rx))
}

/// Keeps a connection up until the source is dropped: runs `first`, then reconnects.
pub(crate) async fn run(inner: Arc<Inner>, first: Opened) {
    let mut next = Some(first);
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        let (ws, rx) = match next.take() {
            Some(ws) => ws,
            None => match open(&inner).await {
                Ok(ws) => {
                    info!(
                        attempts = retrier.failures(),
                        "reconnected to the control plane"
                    );
                    ws
                }
                Err(e) => {
                    let delay = retrier.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot reconnect to the control plane");
                    if !inner.inbox.is_closed() {
                        inner.inbox.fail(e);
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            },
        };
        retrier.reset();
        let why = session(&inner, ws, rx).await;
        inner.disconnected();
        let delay = retrier.next_delay();
        warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "lost the control plane WebSocket; reconnecting");
        tokio::time::sleep(delay).await;
    }
}

/// One connection's life; returns why it ended.
async fn session(inner: &Inner, ws: Ws, mut rx: mpsc::UnboundedReceiver<Message>) -> String {
    let cfg = &inner.cfg;
    let (mut sink, mut stream) = ws.split();
    // Jobs granted to the server (credit) and not pushed yet. A new connection starts at zero.
    let mut granted: usize = 0;
    let mut heard = Instant::now();
    let mut ping = tokio::time::interval_at(Instant::now() + cfg.ping, cfg.ping);
    loop {
        let outgoing = tokio::select! {
            frame = stream.next() => {
                heard = Instant::now();
                match frame {
                    None => return "the control plane closed the connection".into(),
                    Some(Err(e)) => return format!("reading: {e}"),
                    Some(Ok(Message::Text(text))) => {
                        on_frame(inner, &text, &mut granted);
                        continue;
                    }
                    Some(Ok(Message::Close(c))) => return format!("closed by the control plane: {c:?}"),
                    Some(Ok(_)) => continue,
                }
            }
            Some(msg) = rx.recv() => msg,
            want = inner.inbox.wait_for_want_above(granted, false) => {
                let more = want - granted;
                granted = want;
                debug!(credit = more, "granting credit");
                Message::text(ClientFrame::Credit { credit: more as u32 }.to_text())
            }
            _ = ping.tick() => Message::Ping(Default::default()),
            () = tokio::time::sleep_until(heard + cfg.dead_after) => {
                return format!("nothing heard from the control plane for {:?}: the peer is dead", cfg.dead_after);
            }
        };
        match tokio::time::timeout(cfg.request_timeout, sink.send(outgoing)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return format!("writing: {e}"),
            Err(_) => return "writing: the control plane stopped reading".into(),
        }
    }
}

fn on_frame(inner: &Inner, text: &str, granted: &mut usize) {
    match serde_json::from_str::<ServerFrame>(text) {
        Ok(ServerFrame::Job { job, again }) => {
            if !again {
                *granted = granted.saturating_sub(1);
            }
            let item = from_record(&job, SOURCE);
            // A job sent `again` that this worker already has (running, or in the inbox).
            if !lock(&inner.delivered).insert(item.receipt().clone()) {
                debug!(receipt = %item.receipt(), "already delivered; ignoring the job sent again");
                return;
            }
            inner.inbox.deliver(vec![item]);
        }
        Ok(ServerFrame::Cancel { job }) => {
            info!(job_id = %job, "the control plane cancelled a job this worker holds");
            lock(&inner.cancelled).insert(job);
        }
        Ok(f @ ServerFrame::Ok { id, .. }) => inner.answer(id, f),
        Ok(f @ ServerFrame::Error { id: Some(id), .. }) => inner.answer(id, f),
        Ok(ServerFrame::Error {
            id: None,
            status,
            error,
        }) => warn!(status, error = %error, "the control plane rejected a frame"),
        Ok(ServerFrame::Welcome { .. }) => {}
        Err(e) => warn!(error = %e, "unreadable frame from the control plane"),
    }
}
