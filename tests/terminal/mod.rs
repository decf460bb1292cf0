//! The terminal service: real WebSocket clients against the service, started in-process on a
//! free loopback port (or inside the real `citadel work` in `worker.rs`), with its token hashes
//! served by a real HTTP server speaking the control plane's hashes endpoint. tmux runs on a
//! socket private to each test (`tmux -L`), so no test touches a user's tmux.

mod admission;
mod shell;
mod tmux;
mod tokens;
mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use citadel::terminal::auth::{token_hash, HttpFetcher, RefreshPolicy, TokenCache};
use citadel::terminal::frames::Frame;
use citadel::terminal::{TerminalConfig, TmuxMode};
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

pub const ORG: &str = "org-1";
pub const CREDENTIAL: &str = "node-credential";

/// A control plane's hashes endpoint: serves the tokens it holds to a caller with the node's
/// credential, counts the requests, and can be made to fail.
#[derive(Clone, Default)]
pub struct TokenApi {
    pub tokens: Arc<Mutex<Vec<Value>>>,
    pub calls: Arc<AtomicUsize>,
    pub failing: Arc<std::sync::atomic::AtomicBool>,
}

impl TokenApi {
    /// Adds a token of `user` in `org`, expiring at `expires_at` (RFC 3339) when given.
    pub fn add(&self, token: &str, user: &str, org: &str, expires_at: Option<&str>) {
        self.tokens.lock().unwrap().push(json!({
            "hash": token_hash(token), "user_id": user, "org_id": org, "expires_at": expires_at,
        }));
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Serves on a free loopback port; returns the base URL.
    pub async fn serve(&self) -> String {
        async fn hashes(
            State(api): State<TokenApi>,
            Path(org): Path<String>,
            headers: HeaderMap,
        ) -> axum::response::Response {
            api.calls.fetch_add(1, Ordering::SeqCst);
            let auth = headers.get("authorization").and_then(|v| v.to_str().ok());
            if auth != Some(&format!("Bearer {CREDENTIAL}")) {
                return StatusCode::UNAUTHORIZED.into_response();
            }
            if api.failing.load(Ordering::SeqCst) {
                return StatusCode::BAD_GATEWAY.into_response();
            }
            let tokens: Vec<Value> = api
                .tokens
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t["org_id"] == org.as_str())
                .cloned()
                .collect();
            Json(json!({ "tokens": tokens })).into_response()
        }
        let app = axum::Router::new()
            .route(
                "/api/fabric/terminal/tokens/{org}/hashes",
                axum::routing::get(hashes),
            )
            .with_state(self.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}")
    }
}

/// A service configuration on a free port, bare shells (tests of tmux turn it on).
pub fn config(workspace: &std::path::Path) -> TerminalConfig {
    let mut c = TerminalConfig::new("127.0.0.1:0".parse().unwrap(), ORG, workspace.to_path_buf());
    c.tmux = TmuxMode::Off;
    c.rate.per_second = 1000.0;
    c.rate.burst = 1000.0;
    c
}

/// A running service with the token API it checks against; `alice-token` is valid.
pub struct Service {
    pub running: citadel::terminal::Running,
    pub api: TokenApi,
    pub dir: tempfile::TempDir,
}

impl Service {
    pub async fn start(tweak: impl FnOnce(&mut TerminalConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let api = TokenApi::default();
        api.add("alice-token", "alice", ORG, None);
        let url = api.serve().await;
        let mut c = config(&dir.path().join("workspace"));
        tweak(&mut c);
        let fetcher = HttpFetcher::new(&url, ORG, CREDENTIAL).unwrap();
        let cache = TokenCache::new(ORG, Arc::new(fetcher), RefreshPolicy::default());
        let running = citadel::terminal::start(c, cache).await.unwrap();
        Self { running, api, dir }
    }

    pub fn addr(&self) -> SocketAddr {
        self.running.addr
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/terminal?{query}", self.addr())
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.url("token=alice-token")).await
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A terminal client: sends frames, collects output.
pub struct Client {
    pub ws: Ws,
    pub output: Vec<u8>,
}

/// How an attempt to connect was refused: the status and the JSON body.
pub async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => panic!("{url} was accepted"),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).unwrap_or(Value::Null),
            )
        }
        Err(e) => panic!("{url}: {e}"),
    }
}

impl Client {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .unwrap_or_else(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => panic!(
                    "{url}: {} {}",
                    r.status(),
                    String::from_utf8_lossy(r.body().as_deref().unwrap_or_default())
                ),
                e => panic!("{url}: {e}"),
            });
        Self {
            ws,
            output: Vec::new(),
        }
    }

    pub async fn send(&mut self, frame: &Frame) {
        self.ws
            .send(Message::Text(frame.to_text().into()))
            .await
            .unwrap();
    }

    pub async fn type_line(&mut self, line: &str) {
        self.send(&Frame::input(format!("{line}\r").as_bytes()))
            .await;
    }

    /// The next frame (output is also kept in `self.output`); `None` when the socket ends.
    pub async fn next_frame(&mut self, within: Duration) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(within, self.ws.next())
                .await
                .expect("no frame in time")?;
            match msg {
                Ok(Message::Text(t)) => {
                    let f: Frame = serde_json::from_str(t.as_str()).unwrap();
                    if f.kind == "output" {
                        self.output.extend(f.payload_bytes().unwrap());
                    }
                    return Some(f);
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Reads until the output holds `needle` after byte `from`; panics after `within`. Each
    /// frame's bytes are searched once (with the needle's length of overlap), so a large output
    /// costs linear time.
    pub async fn read_until(&mut self, from: usize, needle: &[u8], within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        let mut searched = from;
        loop {
            let start = searched
                .saturating_sub(needle.len())
                .max(from)
                .min(self.output.len());
            if contains(&self.output[start..], needle) {
                return;
            }
            searched = self.output.len();
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            assert!(
                !left.is_zero(),
                "no {:?} in the output: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.output)
            );
            if self.next_frame(left).await.is_none() {
                panic!(
                    "the socket ended before {:?}: {:?}",
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.output)
                );
            }
        }
    }

    /// Runs `cmd` and returns what it printed between two markers.
    pub async fn run(&mut self, cmd: &str) -> String {
        let n = self.output.len();
        let tag = format!("M{}", fastrand::u32(..));
        // The markers are split in the command so the echoed line never matches them.
        self.type_line(&format!("echo {tag}'<'; {cmd}; echo '>'{tag}"))
            .await;
        let start = format!("{tag}<");
        let end = format!(">{tag}");
        self.read_until(n, end.as_bytes(), Duration::from_secs(20))
            .await;
        let text = String::from_utf8_lossy(&self.output[n..]).into_owned();
        let after = &text[text.rfind(&start).unwrap() + start.len()..];
        after[..after.find(&end).unwrap()].trim().to_string()
    }
}

impl Client {
    /// Runs `cmd` and returns what it wrote to a file in `dir` (for screens that tmux redraws,
    /// where the output stream is escape sequences around the text).
    pub async fn run_to_file(&mut self, dir: &std::path::Path, cmd: &str) -> String {
        let n = fastrand::u32(..);
        let (tmp, done) = (dir.join(format!("out-{n}")), dir.join(format!("done-{n}")));
        let line = format!(
            "{{ {cmd}; }} > {} 2>&1; mv {} {}",
            tmp.display(),
            tmp.display(),
            done.display()
        );
        self.type_line(&line).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&done) {
                return text.trim().to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{cmd}` wrote nothing"
            );
            // Keep reading so the shell never blocks on a full PTY.
            let _ = tokio::time::timeout(
                Duration::from_millis(50),
                self.next_frame(Duration::from_secs(1)),
            )
            .await;
        }
    }
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .chars()
                .next();
            state != Some('Z')
        }
        Err(_) => false,
    }
}
