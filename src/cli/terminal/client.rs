//! `citadel terminal NODE`: a WebSocket client of a node's terminal service (docs/terminal.md).
//! NODE is a URL, HOST:PORT, or a peer's name (and port) on this node's mesh (then the stream goes through
//! the local worker's mesh, [`crate::cli::mesh::open_stream`]). It opens
//! `ws://NODE/terminal?token=…&cols=&rows=`, relays stdin as `input` frames and `output`
//! frames to stdout, sends `resize` on SIGWINCH, and ends on the detach key (exit 0), on the
//! node's clean close (exit 0) or with the node's refusal or close reason (non-zero). On a
//! terminal it switches to raw mode for the session; with stdin piped it sends what it reads and
//! prints the output until the node closes. It must never print or log the token.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

use super::tty;
use crate::cli::remote::encode;
use crate::terminal::frames::Frame;

/// The terminal service's port when NODE names none.
pub const DEFAULT_PORT: u16 = 7860;

#[derive(Debug, Args)]
pub struct ConnectArgs {
    /// The node: a peer's name on the mesh of the worker running here (NAME[:PORT]), or its
    /// terminal address, HOST[:PORT] or ws://HOST:PORT (port 7860 by default).
    #[arg(value_name = "NODE", required = true)]
    node: Option<String>,
    /// The terminal token (from `citadel terminal tokens create`).
    #[arg(
        long = "token",
        env = "CITADEL_TERMINAL_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        required = true
    )]
    terminal_token: Option<String>,
    /// The node's terminal passcode, when it has one (sent as the X-Citadel-Passcode header).
    #[arg(
        long,
        env = "CITADEL_TERMINAL_PASSCODE",
        hide_env_values = true,
        value_name = "PASSCODE"
    )]
    passcode: Option<String>,
    /// The key that detaches from the terminal: ctrl-LETTER, ctrl-], ctrl-\ … or none.
    #[arg(long, default_value = "ctrl-]", value_name = "KEY")]
    detach_key: String,
}

fn text(f: &Frame) -> Message {
    Message::text(f.to_text())
}

/// The WebSocket URL for NODE (with the token and size) and the same without its query, to show.
pub fn terminal_url(
    node: &str,
    token: &str,
    size: Option<(u16, u16)>,
) -> anyhow::Result<(String, String)> {
    let node = node.trim().trim_end_matches('/');
    if node.is_empty() {
        bail!("NODE must be HOST[:PORT] or ws://HOST:PORT");
    }
    let base = if let Some(rest) = node
        .strip_prefix("ws://")
        .or_else(|| node.strip_prefix("wss://"))
    {
        if rest.contains('/') {
            node.to_string()
        } else {
            format!("{node}/terminal")
        }
    } else if node.contains("://") {
        bail!("NODE must be HOST[:PORT] or a ws:// or wss:// URL, not `{node}`");
    } else {
        let has_port = node.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        });
        let hostport = if has_port {
            node.to_string()
        } else {
            format!("{node}:{DEFAULT_PORT}")
        };
        format!("ws://{hostport}/terminal")
    };
    let mut url = format!(
        "{base}{}token={}",
        if base.contains('?') { '&' } else { '?' },
        encode(token)
    );
    if let Some((c, r)) = size {
        url.push_str(&format!("&cols={c}&rows={r}"));
    }
    Ok((url, base))
}

/// Why the node refused to open the terminal, from its HTTP answer
/// (`{"error","status"[,"reason"]}`).
fn refusal(shown: &str, status: tungstenite::http::StatusCode, body: Option<&[u8]>) -> String {
    let text = body.map(String::from_utf8_lossy).unwrap_or_default();
    let detail = match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(v) => {
            let error = v["error"].as_str().unwrap_or("").to_string();
            match v["reason"].as_str() {
                Some(r) => format!("{error} ({r})"),
                None => error,
            }
        }
        Err(_) => text.trim().to_string(),
    };
    format!("the node at {shown} refused the terminal: {status}: {detail}")
}

/// What the keyboard (or the pipe) sent.
#[derive(Debug)]
enum Input {
    Bytes(Vec<u8>),
    Detach,
    Eof,
}

/// Reads stdin on a thread of its own (a blocking read cannot be cancelled, and the runtime must
/// not wait for it at exit), stopping at the detach key.
fn read_stdin(tx: mpsc::Sender<Input>, detach: Option<u8>) {
    let mut stdin = std::io::stdin().lock();
    let mut buf = [0u8; 4096];
    loop {
        let n = match stdin.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.blocking_send(Input::Eof);
                return;
            }
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        let cut = detach.and_then(|k| chunk.iter().position(|b| *b == k));
        let before = &chunk[..cut.unwrap_or(n)];
        if !before.is_empty() && tx.blocking_send(Input::Bytes(before.to_vec())).is_err() {
            return;
        }
        if cut.is_some() {
            let _ = tx.blocking_send(Input::Detach);
            return;
        }
    }
}

/// How a session ended well.
#[derive(Debug, PartialEq, Eq)]
enum End {
    Detached,
    Closed,
}

/// The peer and port NODE names on the mesh: NAME or NAME:PORT where NAME is neither an
/// address nor `localhost` (no scheme); `None` for URLs and addresses. A name that is no peer of
/// the local worker's mesh is tried as a host name.
pub fn mesh_peer(node: &str) -> Option<(&str, u16)> {
    let n = node.trim();
    let (name, port) = match n.rsplit_once(':') {
        Some((h, p)) => (h, p.parse().ok()?),
        None => (n, DEFAULT_PORT),
    };
    let plain = !name.is_empty()
        && name != "localhost"
        && name.parse::<std::net::IpAddr>().is_err()
        && !name.contains(['/', ':', '[', ']', '@', '?']);
    plain.then_some((name, port))
}

/// Opens the WebSocket: over the local worker's mesh when NODE is a peer's name there, else
/// straight to NODE.
async fn open(
    node: &str,
    req: tungstenite::handshake::client::Request,
    data_dir: &Path,
) -> Result<Ws, tungstenite::Error> {
    if let Some((peer, port)) = mesh_peer(node) {
        match over_mesh(peer, port, data_dir).await {
            Ok(stream) => {
                let plain = tokio_tungstenite::MaybeTlsStream::Plain(stream);
                return tokio_tungstenite::client_async(req, plain)
                    .await
                    .map(|(ws, _)| ws);
            }
            Err(e) => tracing::debug!(%peer, error = %format!("{e:#}"), "not over the mesh"),
        }
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// A stream to `peer`'s terminal `port` through the local worker's mesh.
async fn over_mesh(
    peer: &str,
    port: u16,
    data_dir: &Path,
) -> anyhow::Result<tokio::net::TcpStream> {
    let addr = crate::cli::status::worker_addr(None, data_dir)?;
    let stream = crate::cli::mesh::open_stream(&addr, peer, port).await?;
    eprintln!("citadel: reaching {peer} over the mesh");
    Ok(stream)
}

pub async fn run(args: ConnectArgs, data_dir: &Path) -> anyhow::Result<()> {
    let node = args.node.context("NODE is required")?;
    let token = args
        .terminal_token
        .context("--token (or CITADEL_TERMINAL_TOKEN) is required")?;
    let detach = tty::parse_detach_key(&args.detach_key)?;
    let interactive = tty::interactive();
    let size = if interactive {
        tty::window_size()
    } else {
        None
    };
    let (url, shown) = terminal_url(&node, &token, size)?;
    let mut req = url
        .as_str()
        .into_client_request()
        .with_context(|| format!("`{shown}` is not a WebSocket URL"))?;
    if let Some(p) = &args.passcode {
        req.headers_mut().insert(
            "X-Citadel-Passcode",
            p.parse()
                .context("the passcode is not a valid header value")?,
        );
    }
    let connect = tokio::time::timeout(Duration::from_secs(15), open(&node, req, data_dir));
    let ws = match connect.await {
        Err(_) => bail!("no answer from the node at {shown} within 15 s"),
        Ok(Ok(ws)) => ws,
        Ok(Err(tungstenite::Error::Http(resp))) => {
            bail!("{}", refusal(&shown, resp.status(), resp.body().as_deref()))
        }
        Ok(Err(e)) => bail!("cannot open the terminal of the node at {shown}: {e}"),
    };
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || read_stdin(tx, if interactive { detach } else { None }));
    let end = if interactive {
        match detach {
            Some(k) => eprintln!("citadel: connected to {shown}; detach with {} (Ctrl-{})", tty::show_key(k), (k | 0x40) as char),
            None => eprintln!("citadel: connected to {shown}; no detach key (the session ends when the shell exits)"),
        }
        let raw = tty::RawMode::enter()?;
        let end = session(ws, rx, true).await;
        drop(raw);
        end?
    } else {
        session(ws, rx, false).await?
    };
    if interactive {
        match end {
            End::Detached => eprintln!("citadel: detached from {shown}"),
            End::Closed => eprintln!("citadel: the node closed the terminal"),
        }
    }
    Ok(())
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Relays until the detach key, the node's close, or a failure.
async fn session(
    ws: Ws,
    mut keys: mpsc::Receiver<Input>,
    interactive: bool,
) -> anyhow::Result<End> {
    let (mut sink, mut stream) = ws.split();
    let mut winch = if interactive {
        Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())
                .context("watching the window size")?,
        )
    } else {
        None
    };
    let mut stdout = std::io::stdout();
    let mut keys_open = true;
    let nl = if interactive { "\r\n" } else { "\n" };
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                None => bail!("the connection to the node was lost (it sent no close frame)"),
                Some(Err(e)) => bail!("the connection to the node broke: {e}"),
                Some(Ok(Message::Text(t))) => {
                    let f: Frame = serde_json::from_str(t.as_str()).context("the node sent a frame that is not JSON")?;
                    match f.kind.as_str() {
                        "output" => {
                            let bytes = f.payload_bytes().context("the node sent output that is not base64")?;
                            stdout.write_all(&bytes).and_then(|()| stdout.flush()).context("writing to stdout")?;
                        }
                        "error" => eprint!("citadel: the node says: {}{nl}", f.error.unwrap_or_default()),
                        _ => {}
                    }
                }
                Some(Ok(Message::Close(frame))) => return closed(frame),
                Some(Ok(_)) => {}
            },
            key = keys.recv(), if keys_open => match key {
                Some(Input::Bytes(b)) => sink.send(text(&Frame::input(&b))).await.context("sending input to the node")?,
                Some(Input::Detach) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "detached".into() }))).await;
                    // Wait briefly for the node's close reply, so it sees a clean goodbye.
                    let _ = tokio::time::timeout(Duration::from_secs(1), async { while stream.next().await.is_some() {} }).await;
                    return Ok(End::Detached);
                }
                Some(Input::Eof) | None => keys_open = false,
            },
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Some(size) = tty::window_size() {
                    sink.send(text(&Frame::resize(size.0, size.1))).await.context("sending the window size")?;
                }
            }
        }
    }
}

/// A close from the node: clean (normal, going away, or no code) or the node's reason.
fn closed(frame: Option<CloseFrame>) -> anyhow::Result<End> {
    match frame {
        None => Ok(End::Closed),
        Some(f) if matches!(f.code, CloseCode::Normal | CloseCode::Away) => Ok(End::Closed),
        Some(f) => bail!(
            "the node closed the terminal: {} ({})",
            f.reason,
            u16::from(f.code)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_become_terminal_urls() {
        let url = |n: &str| terminal_url(n, "t/k", Some((120, 40))).unwrap();
        assert_eq!(
            url("127.0.0.1:9000"),
            (
                "ws://127.0.0.1:9000/terminal?token=t%2Fk&cols=120&rows=40".into(),
                "ws://127.0.0.1:9000/terminal".into()
            )
        );
        assert_eq!(url("gpu-a").1, "ws://gpu-a:7860/terminal");
        assert_eq!(url("[::1]").1, "ws://[::1]:7860/terminal");
        assert_eq!(url("[::1]:7000").1, "ws://[::1]:7000/terminal");
        assert_eq!(url("ws://h:1/").1, "ws://h:1/terminal");
        assert_eq!(
            url("wss://h:1/custom/terminal").1,
            "wss://h:1/custom/terminal"
        );
        assert_eq!(
            terminal_url("h:1", "t", None).unwrap().0,
            "ws://h:1/terminal?token=t"
        );
        assert!(terminal_url("http://h:1", "t", None).is_err());
        assert!(terminal_url(" ", "t", None).is_err());
        // The URL shown never carries the token.
        assert!(!url("h:1").1.contains("t%2Fk"));
    }

    #[test]
    fn only_names_go_over_the_mesh() {
        assert_eq!(mesh_peer("gpu-b"), Some(("gpu-b", DEFAULT_PORT)));
        assert_eq!(mesh_peer(" gpu-b.lab "), Some(("gpu-b.lab", DEFAULT_PORT)));
        assert_eq!(mesh_peer("gpu-b:7000"), Some(("gpu-b", 7000)));
        for direct in [
            "ws://gpu-b:1/",
            "gpu-b:port",
            "127.0.0.1",
            "127.0.0.1:7860",
            "100.64.0.2",
            "::1",
            "[::1]:7000",
            "localhost",
            "localhost:7860",
            "",
        ] {
            assert_eq!(mesh_peer(direct), None, "{direct}");
        }
    }

    #[test]
    fn refusals_print_the_nodes_message_and_reason() {
        let s = tungstenite::http::StatusCode::UNAUTHORIZED;
        let body = br#"{"error":"passcode required","status":401,"reason":"passcode_not_set"}"#;
        let m = refusal("ws://h:1/terminal", s, Some(body));
        assert!(
            m.contains("401") && m.contains("passcode required (passcode_not_set)"),
            "{m}"
        );
        let m = refusal(
            "ws://h:1/terminal",
            tungstenite::http::StatusCode::SERVICE_UNAVAILABLE,
            Some(b"busy"),
        );
        assert!(m.contains("503") && m.ends_with("busy"), "{m}");
    }

    #[test]
    fn only_a_normal_close_is_clean() {
        assert_eq!(closed(None).unwrap(), End::Closed);
        let f = |code| {
            Some(CloseFrame {
                code,
                reason: "idle timeout".into(),
            })
        };
        assert_eq!(closed(f(CloseCode::Normal)).unwrap(), End::Closed);
        let e = closed(f(CloseCode::Policy)).unwrap_err().to_string();
        assert!(e.contains("idle timeout") && e.contains("1008"), "{e}");
    }
}
