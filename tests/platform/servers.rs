//! Real HTTP servers on loopback for the handler tests: a file server with `Range` support
//! (206 with `Content-Range`, 416 past the end) that can cut a transfer half way or send slowly,
//! and a stand-in GLiNER extraction service (`POST /gliner` with `{text, labels, threshold}` →
//! `{"entities": [{start, end, text, label, score}]}`; 503 while "loading"; 422 on a bad body).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

async fn serve(router: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

#[derive(Debug, Default)]
pub struct Files {
    pub body: Vec<u8>,
    /// The next response stops after this many body bytes (the connection is cut).
    pub cut_next_after: Mutex<Option<usize>>,
    /// Sleep between 16 KiB pieces.
    pub slow: AtomicBool,
    /// Answer every request with the whole file (a server without Range support).
    pub ignore_range: AtomicBool,
    /// The `Range` header of every request, in order.
    pub ranges: Mutex<Vec<Option<String>>>,
}

pub struct FileServer {
    pub addr: SocketAddr,
    pub files: Arc<Files>,
}

impl FileServer {
    pub async fn start(body: Vec<u8>) -> Self {
        let files = Arc::new(Files {
            body,
            ..Files::default()
        });
        let router = Router::new()
            .route("/files/{name}", get(file))
            .with_state(files.clone());
        Self {
            addr: serve(router).await,
            files,
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/files/{name}", self.addr)
    }
}

async fn file(State(f): State<Arc<Files>>, headers: HeaderMap) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    f.ranges.lock().unwrap().push(range.clone());
    let len = f.body.len();
    let start = match range.as_deref().and_then(|r| r.strip_prefix("bytes=")) {
        Some(spec) if !f.ignore_range.load(Ordering::SeqCst) => {
            let start: usize = spec.split('-').next().unwrap().parse().unwrap();
            if start >= len {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response();
            }
            Some(start)
        }
        _ => None,
    };
    let from = start.unwrap_or(0);
    let cut = f.cut_next_after.lock().unwrap().take();
    let slow = f.slow.load(Ordering::SeqCst);
    let body = f.body[from..].to_vec();
    let pieces: Vec<Bytes> = body.chunks(16 * 1024).map(Bytes::copy_from_slice).collect();
    let stream = futures_util::stream::unfold(
        (pieces.into_iter(), 0usize),
        move |(mut it, sent)| async move {
            if slow {
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
            let piece = it.next()?;
            match cut {
                Some(limit) if sent + piece.len() > limit => {
                    let keep = limit - sent;
                    if keep == 0 {
                        return Some((Err(std::io::Error::other("cut")), (it, sent)));
                    }
                    Some((Ok(piece.slice(..keep)), (it, limit)))
                }
                _ => Some((
                    Ok::<_, std::io::Error>(piece.clone()),
                    (it, sent + piece.len()),
                )),
            }
        },
    );
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_LENGTH, (len - from).into());
    h.insert(header::ACCEPT_RANGES, "bytes".parse().unwrap());
    if let Some(s) = start {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        resp.headers_mut().insert(
            header::CONTENT_RANGE,
            format!("bytes {s}-{}/{len}", len - 1).parse().unwrap(),
        );
    }
    resp
}

#[derive(Debug, Default)]
pub struct Gliner {
    /// Requests answered 503 before the service is "loaded".
    pub loading: AtomicU32,
    pub requests: AtomicU32,
    pub bodies: Mutex<Vec<Value>>,
}

pub struct GlinerServer {
    pub addr: SocketAddr,
    pub state: Arc<Gliner>,
}

impl GlinerServer {
    pub async fn start(loading: u32) -> Self {
        let state = Arc::new(Gliner {
            loading: AtomicU32::new(loading),
            ..Gliner::default()
        });
        let router = Router::new()
            .route("/gliner", post(predict))
            .with_state(state.clone());
        Self {
            addr: serve(router).await,
            state,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/gliner", self.addr)
    }
}

/// Every capitalised word is an entity of the first label, with score 0.9.
async fn predict(State(g): State<Arc<Gliner>>, body: Bytes) -> Response {
    g.requests.fetch_add(1, Ordering::SeqCst);
    if g.loading
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (StatusCode::SERVICE_UNAVAILABLE, "model loading").into_response();
    }
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "invalid JSON"})),
        )
            .into_response();
    };
    g.bodies.lock().unwrap().push(v.clone());
    let (Some(text), Some(label)) = (v["text"].as_str(), v["labels"][0].as_str()) else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "text and labels are required"})),
        )
            .into_response();
    };
    if label.is_empty() {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"detail": "labels must not be empty strings"})),
        )
            .into_response();
    }
    let threshold = v["threshold"].as_f64().unwrap_or(0.5);
    let mut entities = Vec::new();
    let mut offset = 0;
    for word in text.split(' ') {
        let w = word.trim_matches(|c: char| !c.is_alphanumeric());
        if w.chars().next().is_some_and(char::is_uppercase) && 0.9 >= threshold {
            let start = offset + word.find(w).unwrap();
            entities.push(json!({"start": start, "end": start + w.len(), "text": w, "label": label, "score": 0.9}));
        }
        offset += word.len() + 1;
    }
    Json(json!({"entities": entities})).into_response()
}
