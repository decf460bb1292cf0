//! One terminal connection: bytes from the shell go out as `output` frames, client frames
//! come in as input, resizes and pings, until the shell's output ends, the client goes, the
//! connection idles past its timeout or the service stops; then the shell is ended (a tmux
//! client only detaches: its session lives on). This module never decides who may connect.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frames::{parse_client, Frame, Request};
use super::pty::Shell;

/// How a session is bounded.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub idle_timeout: Duration,
    pub idle_check: Duration,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ShellExited,
    ClientClosed,
    Idle,
    Stopped,
}

/// Bridges `socket` and `shell` until one of them ends, then ends the shell.
pub async fn bridge(
    socket: WebSocket,
    shell: Shell,
    output: mpsc::Receiver<Vec<u8>>,
    bounds: Bounds,
    stop: CancellationToken,
) -> End {
    let (mut tx, rx) = socket.split();
    let end = pump(&mut tx, rx, &shell, output, bounds, stop).await;
    if end == End::Idle {
        let _ = tx
            .send(Message::Text(Frame::error("idle timeout").to_text().into()))
            .await;
    }
    let _ = tx.send(Message::Close(None)).await;
    let pid = shell.pid();
    let _ = tokio::task::spawn_blocking(move || shell.end()).await;
    tracing::info!(?pid, ?end, "terminal session ended");
    end
}

type Tx = futures_util::stream::SplitSink<WebSocket, Message>;
type Rx = futures_util::stream::SplitStream<WebSocket>;

async fn pump(
    tx: &mut Tx,
    mut rx: Rx,
    shell: &Shell,
    mut output: mpsc::Receiver<Vec<u8>>,
    bounds: Bounds,
    stop: CancellationToken,
) -> End {
    let mut last_seen = Instant::now();
    let mut idle = tokio::time::interval(bounds.idle_check);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return End::Stopped,
            out = output.recv() => {
                let Some(bytes) = out else { return End::ShellExited };
                let text = Frame::output(&bytes).to_text();
                if tx.send(Message::Text(text.into())).await.is_err() {
                    return End::ClientClosed;
                }
            }
            msg = rx.next() => {
                let Some(Ok(msg)) = msg else { return End::ClientClosed };
                last_seen = Instant::now();
                if let Some(reply) = answer(msg, shell).await {
                    if reply == Reply::Close {
                        return End::ClientClosed;
                    }
                    if let Reply::Frame(f) = reply {
                        if tx.send(Message::Text(f.to_text().into())).await.is_err() {
                            return End::ClientClosed;
                        }
                    }
                }
            }
            _ = idle.tick() => {
                if last_seen.elapsed() >= bounds.idle_timeout {
                    return End::Idle;
                }
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Reply {
    Frame(Frame),
    Close,
}

/// What one client message does, and the frame to answer with.
async fn answer(msg: Message, shell: &Shell) -> Option<Reply> {
    let text = match msg {
        Message::Text(t) => t,
        Message::Close(_) => return Some(Reply::Close),
        // WebSocket pings are answered by the socket itself; binary frames are not ours.
        Message::Ping(_) | Message::Pong(_) => return None,
        Message::Binary(_) => return Some(Reply::Frame(Frame::error("frames are JSON text"))),
    };
    match parse_client(text.as_str()) {
        Ok(Request::Input(bytes)) => {
            if !shell.write(bytes).await {
                return Some(Reply::Close);
            }
            None
        }
        Ok(Request::Resize { cols, rows }) => match shell.resize(cols, rows) {
            Ok(()) => None,
            Err(e) => Some(Reply::Frame(Frame::error(&format!("resize failed: {e}")))),
        },
        Ok(Request::Ping) => Some(Reply::Frame(Frame::pong())),
        Err(e) => Some(Reply::Frame(Frame::error(&e))),
    }
}
