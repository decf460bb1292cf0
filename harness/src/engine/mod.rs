//! A stand-in inference engine for the `llm` benchmark and the tests: a real HTTP server on
//! loopback that speaks each engine's generation API byte for byte as the engines send it —
//! vLLM/SGLang's OpenAI API (`/v1/completions`, `/v1/chat/completions`: SSE, `data: [DONE]`,
//! the `stream_options.include_usage` usage chunk, vLLM's error body), llama.cpp's `/completion`
//! (SSE, final message `stop: true` with `stop_type`, `tokens_predicted`), and Ollama's
//! `/api/generate` and `/api/chat` (newline-delimited JSON, final line `done: true` with the eval
//! counts) — plus each engine's readiness path. What it generates comes from an [`EngineScript`]:
//! the tokens, the delay before the first one and between tokens, a cut-off after N tokens (the
//! connection is dropped mid-stream), an error answer, a loading phase. It records every request
//! and when the client closed the connection, so a test can prove a cancellation reached it.
//! It holds no model and never stands in for the worker's own code.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use axum::{Json, Router};
use serde_json::{json, Value};

mod frames;

use frames::Frames;

/// What the engine does with a generation request.
#[derive(Debug, Clone)]
pub struct EngineScript {
    /// The tokens, in order; a request gets at most its max tokens of them (finish reason
    /// `length` when it is cut by that, else `stop`).
    pub tokens: Vec<String>,
    /// Instead of `tokens`: each token is the send time (nanoseconds since the Unix epoch) and
    /// a `|`, this many of them, for relay-latency measurements.
    pub timestamp_tokens: Option<usize>,
    pub first_token_delay: Duration,
    pub token_interval: Duration,
    /// Drop the connection after sending this many tokens (a stream cut mid-way).
    pub cut_after: Option<usize>,
    /// Answer generations with this status and exact body.
    pub fail: Option<(u16, String)>,
    /// While set, readiness and generations answer 503 "Loading model" as the engines do.
    pub loading: bool,
}

impl Default for EngineScript {
    fn default() -> Self {
        Self {
            tokens: ["Hello", ",", " world", "!"].map(String::from).to_vec(),
            timestamp_tokens: None,
            first_token_delay: Duration::ZERO,
            token_interval: Duration::ZERO,
            cut_after: None,
            fail: None,
            loading: false,
        }
    }
}

/// One generation request as the engine saw it.
#[derive(Debug, Clone)]
pub struct Served {
    pub path: String,
    pub body: Value,
    pub opened: Instant,
    /// When the response ended: the client closed the connection, or it was complete.
    pub closed: Option<Instant>,
    pub tokens_sent: usize,
    /// Whether the whole answer (final message included) was sent.
    pub completed: bool,
}

#[derive(Debug, Default)]
struct Shared {
    script: Mutex<EngineScript>,
    served: Mutex<Vec<Served>>,
}

/// A running stand-in engine; stops when dropped.
#[derive(Debug)]
pub struct FakeEngine {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeEngine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeEngine {
    /// Serves on 127.0.0.1 on a port the OS picks.
    pub async fn start(script: EngineScript) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            script: Mutex::new(script),
            served: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/completions", post(generate))
            .route("/v1/chat/completions", post(generate))
            .route("/completion", post(generate))
            .route("/api/generate", post(generate))
            .route("/api/chat", post(generate))
            .route("/health", get(ready))
            .route("/v1/models", get(ready))
            .route("/api/tags", get(ready))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        // As the engines' servers do (Go's net/http, uvicorn): a token is one small write that
        // must leave at once, not wait for the previous one's ACK (Nagle).
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared, task })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Changes what the engine does from the next request on.
    pub fn script(&self, change: impl FnOnce(&mut EngineScript)) {
        change(&mut self.shared.script.lock().expect("poisoned"));
    }

    /// The generation requests so far.
    pub fn served(&self) -> Vec<Served> {
        self.shared.served.lock().expect("poisoned").clone()
    }
}

/// Nanoseconds since the Unix epoch (the timestamp tokens' clock).
pub fn epoch_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

const LOADING: &str =
    r#"{"error":{"code":503,"message":"Loading model","type":"unavailable_error"}}"#;

async fn ready(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    if shared.script.lock().expect("poisoned").loading {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::CONTENT_TYPE, "application/json")],
            LOADING,
        )
            .into_response();
    }
    let body = match uri.path() {
        "/api/tags" => {
            json!({"models": [{"name": "tiny:latest", "model": "tiny:latest", "size": 1}]})
        }
        "/v1/models" => {
            json!({"object": "list", "data": [{"id": "tiny", "object": "model", "owned_by": "llamacpp"}]})
        }
        _ => return StatusCode::OK.into_response(),
    };
    Json(body).into_response()
}

/// Which generation API a request came in on.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Api {
    Completions,
    Chat,
    Llama,
    OllamaGenerate,
    OllamaChat,
}

/// Records the end of a response when it is dropped: complete, or the client went away.
struct CloseGuard {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.update(|s| s.closed = Some(Instant::now()));
    }
}

impl CloseGuard {
    /// Records a new generation request; the guard marks its end.
    fn record(shared: &Arc<Shared>, path: String, req: &Value) -> Self {
        let index = {
            let mut served = shared.served.lock().expect("poisoned");
            served.push(Served {
                path,
                body: req.clone(),
                opened: Instant::now(),
                closed: None,
                tokens_sent: 0,
                completed: false,
            });
            served.len() - 1
        };
        Self {
            shared: shared.clone(),
            index,
        }
    }

    fn update(&self, f: impl FnOnce(&mut Served)) {
        if let Some(s) = self
            .shared
            .served
            .lock()
            .expect("poisoned")
            .get_mut(self.index)
        {
            f(s);
        }
    }
}

async fn generate(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let api = Api::from_path(&path);
    let req: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                json!({"object": "error", "message": format!("invalid JSON: {e}"), "type": "BadRequestError", "param": null, "code": 400}).to_string(),
            )
        }
    };
    let script = shared.script.lock().expect("poisoned").clone();
    let guard = CloseGuard::record(&shared, path, &req);
    if script.loading {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, LOADING.into());
    }
    if let Some((status, body)) = &script.fail {
        return json_error(
            StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body.clone(),
        );
    }
    let max = api.max_tokens(&req);
    let n = script
        .timestamp_tokens
        .unwrap_or(script.tokens.len())
        .min(max);
    let frames = Frames::new(api, &req, n, max);
    let stream = req["stream"]
        .as_bool()
        .unwrap_or(!matches!(api, Api::Completions | Api::Chat | Api::Llama));
    let answer = Answer {
        n,
        frames,
        tokens: Tokens {
            list: script.tokens.clone(),
            timestamps: script.timestamp_tokens.is_some(),
        },
        first_delay: script.first_token_delay,
        interval: script.token_interval,
        cut: script.cut_after,
    };
    if !stream {
        return answer.whole(guard).await;
    }
    answer.streamed(guard)
}

fn json_error(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

impl Api {
    fn from_path(path: &str) -> Self {
        match path {
            "/v1/completions" => Api::Completions,
            "/v1/chat/completions" => Api::Chat,
            "/completion" => Api::Llama,
            "/api/generate" => Api::OllamaGenerate,
            _ => Api::OllamaChat,
        }
    }

    /// The request's most tokens, in this API's field (unlimited when absent).
    fn max_tokens(self, req: &Value) -> usize {
        match self {
            Api::Llama => req["n_predict"].as_u64(),
            Api::OllamaGenerate | Api::OllamaChat => req["options"]["num_predict"].as_u64(),
            _ => req["max_tokens"].as_u64(),
        }
        .unwrap_or(u64::MAX) as usize
    }
}

/// The text of each token: the script's tokens, or the send time (a timestamp token).
#[derive(Debug, Clone)]
struct Tokens {
    list: Vec<String>,
    timestamps: bool,
}

impl Tokens {
    fn get(&self, i: usize) -> String {
        if self.timestamps {
            format!("{}|", epoch_nanos())
        } else {
            self.list[i].clone()
        }
    }
}

/// One answer to send: `n` tokens, framed for the API, at the script's pace.
#[derive(Debug)]
struct Answer {
    n: usize,
    frames: Frames,
    tokens: Tokens,
    first_delay: Duration,
    interval: Duration,
    cut: Option<usize>,
}

impl Answer {
    /// A non-streamed answer, sent once all its tokens would have been generated.
    async fn whole(self, guard: CloseGuard) -> Response {
        let n = self.n;
        tokio::time::sleep(self.first_delay + self.interval * n as u32).await;
        let content: String = (0..n).map(|i| self.tokens.get(i)).collect();
        guard.update(|s| {
            s.tokens_sent = n;
            s.completed = true;
        });
        Json(self.frames.whole(&content)).into_response()
    }

    /// A streamed answer: SSE, or newline-delimited JSON for Ollama.
    fn streamed(self, guard: CloseGuard) -> Response {
        let content_type = match self.frames.api {
            Api::OllamaGenerate | Api::OllamaChat => "application/x-ndjson",
            _ => "text/event-stream",
        };
        let answer = Arc::new(self);
        let start = tokio::time::Instant::now();
        let body = futures_util::stream::unfold((0usize, guard, false), move |state| {
            let answer = answer.clone();
            async move { answer.next(start, state).await }
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(body))
            .expect("a valid response")
    }

    /// The stream's next piece after `i` tokens: a token, the closing messages, or the cut.
    async fn next(
        &self,
        start: tokio::time::Instant,
        (i, guard, finished): (usize, CloseGuard, bool),
    ) -> Option<(std::io::Result<Bytes>, (usize, CloseGuard, bool))> {
        if finished {
            return None;
        }
        if self.cut == Some(i) {
            // Dropping the connection without the final message, once what was sent is out.
            tokio::time::sleep(self.interval.max(Duration::from_millis(20))).await;
            return Some((Err(std::io::Error::other("cut off")), (i, guard, true)));
        }
        if i < self.n {
            self.wait_for(start, i).await;
            let mut out = String::new();
            if i == 0 {
                out += &self.frames.opening();
            }
            out += &self.frames.token(&self.tokens.get(i));
            guard.update(|s| s.tokens_sent = i + 1);
            return Some((Ok(Bytes::from(out)), (i + 1, guard, false)));
        }
        if self.n == 0 {
            self.wait_for(start, 0).await;
        }
        guard.update(|s| s.completed = true);
        Some((Ok(Bytes::from(self.frames.closing())), (i, guard, true)))
    }

    /// Token i is due at start + first delay + i × interval (a steady rate, whatever the time
    /// spent sending); a token already due goes out without touching the timer.
    async fn wait_for(&self, start: tokio::time::Instant, i: usize) {
        let due = start + self.first_delay + self.interval * i as u32;
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    }
}
