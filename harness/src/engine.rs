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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
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

fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(|m| words(&m["content"])).sum(),
        _ => 0,
    }
}

async fn generate(State(shared): State<Arc<Shared>>, uri: Uri, body: Bytes) -> Response {
    let path = uri.path().to_string();
    let api = match path.as_str() {
        "/v1/completions" => Api::Completions,
        "/v1/chat/completions" => Api::Chat,
        "/completion" => Api::Llama,
        "/api/generate" => Api::OllamaGenerate,
        _ => Api::OllamaChat,
    };
    let json_error = |status: StatusCode, body: String| {
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
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
    let index = {
        let mut served = shared.served.lock().expect("poisoned");
        served.push(Served {
            path: path.clone(),
            body: req.clone(),
            opened: Instant::now(),
            closed: None,
            tokens_sent: 0,
            completed: false,
        });
        served.len() - 1
    };
    let guard = CloseGuard {
        shared: shared.clone(),
        index,
    };
    if script.loading {
        return json_error(StatusCode::SERVICE_UNAVAILABLE, LOADING.into());
    }
    if let Some((status, body)) = script.fail {
        return json_error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            body,
        );
    }
    let max = match api {
        Api::Llama => req["n_predict"].as_u64(),
        Api::OllamaGenerate | Api::OllamaChat => req["options"]["num_predict"].as_u64(),
        _ => req["max_tokens"].as_u64(),
    }
    .unwrap_or(u64::MAX) as usize;
    let available = script.timestamp_tokens.unwrap_or(script.tokens.len());
    let n = available.min(max);
    let finish = if n == max { "length" } else { "stop" };
    let model = req["model"].as_str().unwrap_or("tiny").to_string();
    let prompt_tokens = words(&req["prompt"]) + words(&req["messages"]);
    let stream = req["stream"]
        .as_bool()
        .unwrap_or(!matches!(api, Api::Completions | Api::Chat | Api::Llama));
    let token = move |i: usize| match script.timestamp_tokens {
        Some(_) => format!("{}|", epoch_nanos()),
        None => script.tokens[i].clone(),
    };
    let frames = Frames {
        api,
        model,
        id: format!("{:x}", epoch_nanos()),
        created: now_secs(),
        prompt_tokens,
        completion_tokens: n as u64,
        finish,
        include_usage: req["stream_options"]["include_usage"]
            .as_bool()
            .unwrap_or(false),
    };

    if !stream {
        tokio::time::sleep(script.first_token_delay + script.token_interval * n as u32).await;
        let content: String = (0..n).map(&token).collect();
        guard.update(|s| {
            s.tokens_sent = n;
            s.completed = true;
        });
        return Json(frames.whole(&content)).into_response();
    }
    let content_type = match api {
        Api::OllamaGenerate | Api::OllamaChat => "application/x-ndjson",
        _ => "text/event-stream",
    };
    let (first_delay, interval, cut) = (
        script.first_token_delay,
        script.token_interval,
        script.cut_after,
    );
    // Token i is due at start + first delay + i × interval (a steady rate, whatever the time
    // spent sending); a token already due goes out without touching the timer.
    let start = tokio::time::Instant::now();
    let wait_for = move |i: usize| async move {
        let due = start + first_delay + interval * i as u32;
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
    };
    let body = futures_util::stream::unfold((0usize, guard, false), move |(i, guard, finished)| {
        let frames = frames.clone();
        let token = token.clone();
        async move {
            if finished {
                return None;
            }
            if cut == Some(i) {
                // Dropping the connection without the final message, once what was sent is out.
                tokio::time::sleep(interval.max(Duration::from_millis(20))).await;
                return Some((Err(std::io::Error::other("cut off")), (i, guard, true)));
            }
            if i < n {
                wait_for(i).await;
                let mut out = String::new();
                if i == 0 {
                    out += &frames.opening();
                }
                out += &frames.token(&token(i));
                guard.update(|s| s.tokens_sent = i + 1);
                return Some((Ok(Bytes::from(out)), (i + 1, guard, false)));
            }
            if n == 0 {
                wait_for(0).await;
            }
            guard.update(|s| s.completed = true);
            Some((Ok(Bytes::from(frames.closing())), (i, guard, true)))
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

/// The exact messages of one answer.
#[derive(Debug, Clone)]
struct Frames {
    api: Api,
    model: String,
    id: String,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish: &'static str,
    include_usage: bool,
}

/// Adds the fields of `extra` (an object) to `v`.
fn merge(v: &mut Value, extra: Value) {
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

impl Frames {
    fn usage(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + self.completion_tokens, "completion_tokens": self.completion_tokens})
    }

    fn ollama(&self, text: &str, done: bool) -> Value {
        let created_at = citadel_transports::events::rfc3339(SystemTime::now());
        let mut v = match self.api {
            Api::OllamaChat => {
                json!({"model": self.model, "created_at": created_at, "message": {"role": "assistant", "content": text}, "done": done})
            }
            _ => {
                json!({"model": self.model, "created_at": created_at, "response": text, "done": done})
            }
        };
        if done {
            let extra = json!({"done_reason": self.finish, "total_duration": 1_000_000, "load_duration": 1000,
                "prompt_eval_count": self.prompt_tokens, "prompt_eval_duration": 1000,
                "eval_count": self.completion_tokens, "eval_duration": 1000});
            merge(&mut v, extra);
            if self.api == Api::OllamaGenerate {
                v["context"] = json!([1, 2, 3]);
            }
        }
        v
    }

    fn llama(&self, text: &str, stop: bool, predicted: u64) -> Value {
        let mut v = json!({"index": 0, "content": text, "tokens": [], "stop": stop, "id_slot": 0,
            "tokens_predicted": predicted, "tokens_evaluated": self.prompt_tokens});
        if stop {
            let extra = json!({"model": self.model, "generation_settings": {"n_predict": self.completion_tokens},
                "has_new_line": false, "truncated": false,
                "stop_type": if self.finish == "length" { "limit" } else { "eos" }, "stopping_word": "",
                "tokens_cached": self.prompt_tokens + predicted,
                "timings": {"prompt_n": self.prompt_tokens, "predicted_n": predicted}});
            merge(&mut v, extra);
        }
        v
    }

    fn openai_chunk(&self, choice: Value) -> Value {
        let (prefix, object) = match self.api {
            Api::Chat => ("chatcmpl-", "chat.completion.chunk"),
            _ => ("cmpl-", "text_completion"),
        };
        json!({"id": format!("{prefix}{}", self.id), "object": object, "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    /// What precedes the first token (the chat role delta).
    fn opening(&self) -> String {
        match self.api {
            Api::Chat => sse(&self.openai_chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
            )),
            _ => String::new(),
        }
    }

    fn token(&self, text: &str) -> String {
        match self.api {
            Api::Completions => sse(&self.openai_chunk(
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null, "stop_reason": null}),
            )),
            Api::Chat => sse(&self.openai_chunk(
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}),
            )),
            Api::Llama => sse(&self.llama(text, false, 0)),
            Api::OllamaGenerate | Api::OllamaChat => format!("{}\n", self.ollama(text, false)),
        }
    }

    fn closing(&self) -> String {
        match self.api {
            Api::Completions | Api::Chat => {
                let choice = if self.api == Api::Chat {
                    json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish, "stop_reason": null})
                } else {
                    json!({"index": 0, "text": "", "logprobs": null, "finish_reason": self.finish, "stop_reason": null})
                };
                let mut out = sse(&self.openai_chunk(choice));
                if self.include_usage {
                    let mut u = self.openai_chunk(json!(null));
                    u["choices"] = json!([]);
                    u["usage"] = self.usage();
                    out += &sse(&u);
                }
                out + "data: [DONE]\n\n"
            }
            Api::Llama => sse(&self.llama("", true, self.completion_tokens)),
            Api::OllamaGenerate | Api::OllamaChat => format!("{}\n", self.ollama("", true)),
        }
    }

    /// A non-streamed answer.
    fn whole(&self, content: &str) -> Value {
        match self.api {
            Api::Completions => {
                json!({"id": format!("cmpl-{}", self.id), "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": content, "logprobs": null, "finish_reason": self.finish, "stop_reason": null}], "usage": self.usage()})
            }
            Api::Chat => {
                json!({"id": format!("chatcmpl-{}", self.id), "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": self.finish, "stop_reason": null}], "usage": self.usage()})
            }
            Api::Llama => self.llama(content, true, self.completion_tokens),
            Api::OllamaGenerate | Api::OllamaChat => {
                let mut v = self.ollama(content, true);
                v["done"] = json!(true);
                v
            }
        }
    }
}
