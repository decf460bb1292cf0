//! The terminal's HTTP side: the listener, the routes (`GET /terminal` upgrades to the
//! WebSocket, `/health`, `/stats`, `/`), and the admission of each `/terminal` request in this
//! order: the client's rate limit (429), the browser origin (403), the token (401, or 403 for
//! another organization), the passcode gate (401 with a `reason`), the connection cap (503).
//! Errors are JSON `{"error","status","reason"?}`. Background tasks keep the token cache fresh,
//! forget idle rate-limit buckets and reap expired tmux sessions. It must never log a token or
//! a passcode.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::auth::{token_hash, TokenCache, User, Verdict};
use super::limits::{client_ip, origin_allowed, RateLimiter};
use super::pty::{login_shell, scrubbed_env, Launch, Shell};
use super::session::{bridge, Bounds};
use super::tmux::Tmux;
use super::{TerminalConfig, TmuxMode};

/// The service's shared state.
#[derive(Debug)]
struct Service {
    config: TerminalConfig,
    tokens: Arc<TokenCache>,
    slots: Arc<Semaphore>,
    limiter: Mutex<RateLimiter>,
    tmux: Option<Tmux>,
    shell: PathBuf,
    sessions: AtomicUsize,
    stop: CancellationToken,
}

/// A running terminal service.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    service: Arc<Service>,
}

/// How long [`Running::stop`] waits for the sessions' shells to be ended.
const STOP_WAIT: Duration = Duration::from_secs(5);

impl Running {
    /// What serves the terminal on more listeners (the node's mesh address), with the same
    /// admission, limits and sessions, until the service stops.
    pub fn handle(&self) -> crate::serve::Handle {
        let router = router(self.service.clone());
        crate::serve::Handle::new(router, self.stop.clone(), "terminal")
    }

    /// The port of the loopback listener (the mesh listener uses the same).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops listening, ends every session (returning once their shells are ended, or after
    /// 5 s) and the background tasks.
    pub async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let deadline = tokio::time::Instant::now() + STOP_WAIT;
        while self.service.sessions.load(Ordering::SeqCst) > 0
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Binds `config.listen` and serves; the token cache is refreshed in the background from now on.
pub async fn start(config: TerminalConfig, tokens: Arc<TokenCache>) -> anyhow::Result<Running> {
    let tmux = match (config.tmux, super::tmux::find()) {
        (TmuxMode::Off, _) => None,
        (TmuxMode::Required, None) => anyhow::bail!("terminal: tmux is required but not installed"),
        (_, found) => found,
    };
    std::fs::create_dir_all(&config.workspace)
        .with_context(|| format!("creating the workspace {}", config.workspace.display()))?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("terminal: binding {}", config.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the terminal listens beyond loopback");
    }
    let shell = login_shell();
    let tmux = tmux.map(|binary| Tmux {
        binary,
        socket: config.tmux_socket.clone(),
        env: scrubbed_env(&config.workspace, &shell),
    });
    let stop = CancellationToken::new();
    let service = Arc::new(Service {
        slots: Arc::new(Semaphore::new(config.max_connections)),
        limiter: Mutex::new(RateLimiter::new(config.rate)),
        tokens: tokens.clone(),
        tmux,
        shell,
        sessions: AtomicUsize::new(0),
        stop: stop.clone(),
        config,
    });
    let mut tasks = vec![
        tokio::spawn(tokens.keep_fresh(stop.clone())),
        tokio::spawn(forget_buckets(service.clone())),
    ];
    if service.tmux.is_some() {
        tasks.push(tokio::spawn(reap_sessions(service.clone())));
    }
    tasks.push(crate::serve::spawn(
        listener,
        router(service.clone()),
        stop.clone(),
        "terminal",
    ));
    tracing::info!(%addr, tmux = service.tmux.is_some(), "terminal service listening");
    Ok(Running {
        addr,
        stop,
        tasks,
        service,
    })
}

fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/stats", get(stats))
        .route("/terminal", get(terminal))
        .with_state(service)
}

type St = State<Arc<Service>>;

async fn index() -> Json<Value> {
    Json(json!({
        "service": "citadel-terminal",
        "version": env!("CARGO_PKG_VERSION"),
        "endpoints": ["/terminal", "/health", "/stats"],
    }))
}

async fn stats(State(s): St) -> Json<Value> {
    let c = &s.config;
    let clients = s.limiter.lock().expect("limiter").clients();
    Json(json!({
        "connections": c.max_connections - s.slots.available_permits(),
        "sessions": s.sessions.load(Ordering::Relaxed),
        "tmux": s.tmux.is_some(),
        "tokens_cached": s.tokens.cached(),
        "rate_limited_clients": clients,
        "limits": {
            "max_connections": c.max_connections,
            "idle_timeout_s": c.idle_timeout.as_secs(),
            "rate_per_second": c.rate.per_second,
            "rate_burst": c.rate.burst,
        },
    }))
}

/// An HTTP error as JSON.
fn reject(status: StatusCode, error: &str, reason: Option<&str>) -> Response {
    let mut body = json!({"error": error, "status": status.as_u16()});
    if let Some(r) = reason {
        body["reason"] = json!(r);
    }
    (status, Json(body)).into_response()
}

async fn terminal(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let (user, permit) = match admit(&s, peer, &headers, &q).await {
        Ok(ok) => ok,
        Err(resp) => return resp,
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return reject(StatusCode::BAD_REQUEST, &e.body_text(), None),
    };
    let size = |k: &str, d: u16| {
        q.get(k)
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .unwrap_or(d)
    };
    let (cols, rows) = (size("cols", 80), size("rows", 24));
    ws.on_upgrade(move |socket| async move {
        let _permit = permit;
        s.sessions.fetch_add(1, Ordering::SeqCst);
        serve_session(&s, socket, user, cols, rows).await;
        s.sessions.fetch_sub(1, Ordering::SeqCst);
    })
}

/// One upgraded connection: its shell started, bridged, ended.
async fn serve_session(s: &Arc<Service>, mut socket: WebSocket, user: User, cols: u16, rows: u16) {
    let launched = {
        let (s, user) = (s.clone(), user.clone());
        tokio::task::spawn_blocking(move || launch(&s, &user, cols, rows)).await
    };
    let (shell, output) = match launched.map_err(anyhow::Error::from).and_then(|r| r) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "terminal: cannot start a shell");
            let text = super::frames::Frame::error("cannot start a shell").to_text();
            let _ = socket.send(Message::Text(text.into())).await;
            return;
        }
    };
    tracing::info!(user = %user.user_id, pid = ?shell.pid(), cols, rows, "terminal session started");
    let bounds = Bounds {
        idle_timeout: s.config.idle_timeout,
        idle_check: s.config.idle_check,
    };
    bridge(socket, shell, output, bounds, s.stop.clone()).await;
}

/// The admission checks, in order; the error is the response to send.
async fn admit(
    s: &Service,
    peer: SocketAddr,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> Result<(User, OwnedSemaphorePermit), Response> {
    let header_str = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let client = client_ip(
        peer.ip(),
        header_str("x-forwarded-for"),
        &s.config.trusted_proxies,
    );
    let allowed = s
        .limiter
        .lock()
        .expect("limiter")
        .allow(client, tokio::time::Instant::now());
    if !allowed {
        return Err(reject(StatusCode::TOO_MANY_REQUESTS, "rate limited", None));
    }
    if !origin_allowed(header_str("origin"), &s.config.allowed_origins) {
        return Err(reject(StatusCode::FORBIDDEN, "origin not allowed", None));
    }
    let bearer = header_str("authorization").and_then(|v| v.strip_prefix("Bearer "));
    let Some(token) = q
        .get("token")
        .map(String::as_str)
        .or(bearer)
        .filter(|t| !t.is_empty())
    else {
        return Err(reject(StatusCode::UNAUTHORIZED, "missing token", None));
    };
    let user = match s.tokens.verify(token).await {
        Verdict::Valid(u) => u,
        Verdict::WrongOrg => {
            return Err(reject(
                StatusCode::FORBIDDEN,
                "token of another organization",
                None,
            ))
        }
        Verdict::Expired => return Err(reject(StatusCode::UNAUTHORIZED, "token expired", None)),
        Verdict::Unknown => return Err(reject(StatusCode::UNAUTHORIZED, "invalid token", None)),
    };
    let passcode = q
        .get("passcode")
        .map(String::as_str)
        .or(header_str("x-citadel-passcode"));
    if let Err(reason) = passcode_check(&s.config.passcode, passcode) {
        return Err(reject(
            StatusCode::UNAUTHORIZED,
            "node passcode required",
            Some(reason),
        ));
    }
    let permit = s.slots.clone().try_acquire_owned().map_err(|_| {
        reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections",
            None,
        )
    })?;
    Ok((user, permit))
}

/// The passcode gate: `Err(reason)` when it refuses.
fn passcode_check(gate: &super::PasscodeGate, given: Option<&str>) -> Result<(), &'static str> {
    if !gate.required && gate.hash.is_none() {
        return Ok(());
    }
    let Some(expected) = gate.hash.as_deref() else {
        return Err("passcode_not_set");
    };
    let got = token_hash(given.unwrap_or(""));
    let expected = expected.trim().to_ascii_lowercase();
    // Compare without stopping early.
    let same = got.len() == expected.len()
        && got
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if same && given.is_some() {
        Ok(())
    } else {
        Err("passcode_invalid")
    }
}

/// The command for `user`'s terminal: their tmux session, or a bare login shell.
fn launch(
    s: &Service,
    user: &User,
    cols: u16,
    rows: u16,
) -> anyhow::Result<(Shell, tokio::sync::mpsc::Receiver<Vec<u8>>)> {
    let ws = &s.config.workspace;
    let launch = match &s.tmux {
        Some(t) => t.session_for(&user.user_id, ws, &s.shell, cols, rows)?,
        None => Launch {
            argv: vec![s.shell.clone().into(), "-l".into()],
            cwd: ws.clone(),
            env: scrubbed_env(ws, &s.shell),
        },
    };
    Shell::spawn(&launch, cols, rows)
}

/// Drops rate-limit buckets unused for their time, every minute.
async fn forget_buckets(s: Arc<Service>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => return,
            _ = every.tick() => s.limiter.lock().expect("limiter").sweep(tokio::time::Instant::now()),
        }
    }
}

/// Ends expired detached tmux sessions, every `reap_every`.
async fn reap_sessions(s: Arc<Service>) {
    let mut every = tokio::time::interval(s.config.reap_every);
    loop {
        tokio::select! {
            _ = s.stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let s2 = s.clone();
        let reaped = tokio::task::spawn_blocking(move || {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            s2.tmux.as_ref().map(|t| t.reap(s2.config.session_ttl, now))
        })
        .await;
        if let Ok(Some(Ok(names))) = reaped {
            if !names.is_empty() {
                tracing::info!(sessions = ?names, "ended expired terminal sessions");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::terminal::PasscodeGate;

    #[test]
    fn the_passcode_gate_says_why() {
        let off = PasscodeGate::default();
        assert_eq!(passcode_check(&off, None), Ok(()));
        let unset = PasscodeGate {
            required: true,
            hash: None,
        };
        assert_eq!(
            passcode_check(&unset, Some("1234")),
            Err("passcode_not_set")
        );
        let set = PasscodeGate {
            required: true,
            hash: Some(token_hash("1234")),
        };
        assert_eq!(passcode_check(&set, Some("1234")), Ok(()));
        assert_eq!(passcode_check(&set, Some("12345")), Err("passcode_invalid"));
        assert_eq!(passcode_check(&set, None), Err("passcode_invalid"));
    }
}
