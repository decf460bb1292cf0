//! The node's connection to the control plane's relay (docs/mesh.md#relay): one WebSocket
//! (`GET /api/fabric/mesh/relay`, the node's credential as its bearer token, TLS for an https
//! plane) that bridges the data plane's two channels: each `(destination key, datagram)` from
//! `outbound` goes out as one binary frame `[destination key | datagram]`; each frame
//! `[source key | datagram]` that comes in goes to `inbound` as `(source key, datagram)`.
//! Datagrams are never queued across a lost connection or held for a full `inbound` (UDP
//! semantics: WireGuard retransmits). A lost connection is remade with the one backoff policy; a
//! refused credential (401, 403) ends it. It must never log the credential, and never read what
//! the datagrams carry.

use std::time::Duration;

use bytes::Bytes;
use citadel_transports::control_plane::mesh_wire::{encode_frame, split_frame, MAX_FRAME};
use citadel_transports::Backoff;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{header, HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use super::coord::CoordError;
use super::PeerKey;

/// How often the node pings the relay; silence for [`DEAD_AFTER`] means the connection is gone.
const PING_EVERY: Duration = Duration::from_secs(15);
const DEAD_AFTER: Duration = Duration::from_secs(45);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How one connection ended.
enum End {
    /// The data plane dropped a channel: the relay is no longer wanted.
    Done,
    Lost(String),
}

/// Connects to the relay of the plane at `plane` with the node credential `token` and bridges
/// the channels until the data plane drops one (`Ok`) or the plane refuses the credential.
pub fn spawn(
    plane: &str,
    token: &str,
    inbound: mpsc::Sender<(PeerKey, Bytes)>,
    outbound: mpsc::Receiver<(PeerKey, Bytes)>,
) -> anyhow::Result<JoinHandle<Result<(), CoordError>>> {
    let url = super::ws_url(plane, "/api/fabric/mesh/relay")?;
    let auth = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the node credential is not a valid header value"))?;
    // One crypto provider for the process (ring), as the HTTP clients install it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(tokio::spawn(run(url, auth, inbound, outbound)))
}

async fn run(
    url: String,
    auth: HeaderValue,
    inbound: mpsc::Sender<(PeerKey, Bytes)>,
    mut outbound: mpsc::Receiver<(PeerKey, Bytes)>,
) -> Result<(), CoordError> {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        let why = match connect(&url, &auth).await {
            Ok(ws) => {
                tracing::info!(attempts = retrier.failures(), "mesh relay connected");
                retrier.reset();
                match pump(ws, &inbound, &mut outbound).await {
                    End::Done => return Ok(()),
                    End::Lost(why) => why,
                }
            }
            Err(
                e @ CoordError::Refused {
                    status: 401 | 403, ..
                },
            ) => {
                tracing::error!(error = %e, "the control plane refused this node's relay connection");
                return Err(e);
            }
            Err(e) => e.to_string(),
        };
        let delay = retrier.next_delay();
        tracing::warn!(reason = %why, retry_in_ms = delay.as_millis() as u64, "mesh relay connection lost");
        let until = Instant::now() + delay;
        // Meanwhile the data plane's datagrams are dropped, as a network that is down would.
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => break,
                got = outbound.recv() => if got.is_none() { return Ok(()) },
            }
        }
    }
}

async fn connect(url: &str, auth: &HeaderValue) -> Result<Ws, CoordError> {
    let mut req = url
        .into_client_request()
        .map_err(|e| CoordError::Unavailable(format!("the relay URL: {e}")))?;
    req.headers_mut()
        .insert(header::AUTHORIZATION, auth.clone());
    let cfg = WebSocketConfig::default().max_message_size(Some(MAX_FRAME));
    let open = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true);
    match tokio::time::timeout(Duration::from_secs(15), open).await {
        Err(_) => Err(CoordError::Unavailable("no answer within 15 s".into())),
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(tungstenite::Error::Http(resp))) => {
            let status = resp.status();
            let message = resp
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                Err(CoordError::Unavailable(format!("{status}: {message}")))
            } else {
                Err(CoordError::Refused {
                    status: status.as_u16(),
                    message,
                })
            }
        }
        Ok(Err(e)) => Err(CoordError::Unavailable(e.to_string())),
    }
}

/// Bridges one connection and the channels until either ends.
async fn pump(
    ws: Ws,
    inbound: &mpsc::Sender<(PeerKey, Bytes)>,
    outbound: &mut mpsc::Receiver<(PeerKey, Bytes)>,
) -> End {
    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            out = outbound.recv() => {
                let Some((key, datagram)) = out else {
                    let _ = sink.send(Message::Close(None)).await;
                    return End::Done;
                };
                let frame = Bytes::from(encode_frame(&key, &datagram));
                if let Err(e) = sink.send(Message::Binary(frame)).await {
                    return End::Lost(format!("write error: {e}"));
                }
            }
            msg = stream.next() => {
                heard = Instant::now();
                match msg {
                    None => return End::Lost("closed".into()),
                    Some(Err(e)) => return End::Lost(format!("read error: {e}")),
                    Some(Ok(Message::Binary(frame))) => {
                        let Some((src, _)) = split_frame(&frame) else { continue };
                        let datagram = frame.slice(src.len()..);
                        match inbound.try_send((src, datagram)) {
                            Ok(()) => {}
                            Err(TrySendError::Full(_)) => tracing::trace!("the data plane is behind: a datagram dropped"),
                            Err(TrySendError::Closed(_)) => return End::Done,
                        }
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default();
                        return End::Lost(format!("closed by the control plane: {why}"));
                    }
                    Some(Ok(_)) => {}
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > DEAD_AFTER {
                    return End::Lost(format!("nothing from the relay for {DEAD_AFTER:?}"));
                }
                if let Err(e) = sink.send(Message::Ping(Bytes::new())).await {
                    return End::Lost(format!("write error: {e}"));
                }
            }
        }
    }
}
