//! The control plane's HTTP API (axum): the routes, bearer-token auth (the admin token or a node's
//! credential, with the rules of [`super::auth`]) and body limits (the error
//! shape and the checks shared with the WebSocket are [`super::common`]). The Nexus wire format of docs/wire-format.md#nexus-http (`GET /api/v1/jobs/next`,
//! `POST /api/v1/jobs/{id}/status`, `GET /api/v1/nodes`) is served exactly; everything else is
//! citadel's own API, documented in docs/control-plane.md. Every handler that changes state waits for
//! [`Store::flush`] before it answers, except where the store says the write survives a crash
//! without it (a renewal of the same length, a leased worker's non-terminal event). This module must never hold job state of its own or log
//! the token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Extension, Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::auth::{self, Principal};
use super::common::{
    check_event, lease_of, parse, record_event, record_events, settle_of, ApiError, ApiResult,
    AppState, Body, MAX_BODY, MAX_WAIT,
};
use super::store::{Offer, StoreError};
use citadel_transports::control_plane::wire::{
    BatchOp, BatchRequest, BatchResponse, BatchResult, ClaimRequest, RenewRequest, RenewResponse,
    SettleRequest, BATCH_FEATURE, CLAIM_EVENT_FEATURE, MAX_BATCH, SETTLE_EVENTS_FEATURE,
    SETTLE_EVENT_FEATURE,
};

use super::store::{
    now_ms, rfc3339_ms, JobRecord, NewJob, NodeRecord, QueueState, DEFAULT_LEASE,
    NODE_OFFLINE_AFTER,
};

/// Why a revoked node's request is refused (as for a wrong token: it has no credential now).
pub(crate) const REVOKED: &str =
    "missing, invalid or revoked bearer token (Authorization: Bearer TOKEN)";

/// Who a bearer token stands for: the admin token, else a live node credential.
pub(crate) fn principal(app: &AppState, token: &str) -> Option<Principal> {
    if super::credentials::same(token.as_bytes(), app.token.as_bytes()) {
        Some(Principal::admin())
    } else {
        app.credentials.authenticate(token)
    }
}

/// Authenticates every request, refuses a node what only the admin may do (403) and another
/// organization's job (404, as if it did not exist), and hands the [`Principal`] on.
async fn auth(State(app): St, mut req: Request, next: Next) -> Response {
    let who = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| principal(&app, t.trim()));
    let path = req.uri().path().to_string();
    let Some(who) = who else {
        tracing::debug!(%path, "request without a valid bearer token");
        return ApiError(StatusCode::UNAUTHORIZED, REVOKED.into()).into_response();
    };
    if let Err(denied) = auth::authorize(&who, auth::need(req.method().as_str(), &path)) {
        tracing::info!(node_id = who.node_id(), %path, "a node credential was refused an admin endpoint");
        return ApiError(StatusCode::FORBIDDEN, denied.0).into_response();
    }
    if let Some(job) = auth::job_of(&path) {
        match app.store.org_of(&job) {
            Ok(org) if !who.may_touch(&org) => {
                return ApiError::from(StoreError::NotFound(job)).into_response()
            }
            _ => {}
        }
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

type St = State<Arc<AppState>>;

async fn not_found() -> ApiError {
    ApiError(StatusCode::NOT_FOUND, "no such endpoint".into())
}

pub fn router(app: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/jobs", post(submit).get(list_jobs))
        .route("/jobs/next", get(next_job))
        .route("/jobs/claim", post(claim))
        .route("/jobs/batch", post(batch))
        .route("/jobs/{id}", get(show_job))
        .route("/jobs/{id}/status", post(report_status))
        .route("/jobs/{id}/lease", post(renew))
        .route("/jobs/{id}/settle", post(settle))
        .route("/jobs/{id}/cancel", post(cancel))
        .route(
            "/jobs/{id}/events",
            post(append_event).get(super::sse::events),
        )
        .route("/dlq", get(dlq))
        .route("/dlq/{id}/requeue", post(requeue))
        .route("/nodes", get(nodes))
        .route("/nodes/heartbeat", post(heartbeat))
        .merge(super::device_api::admin())
        .route("/nodes/{id}", get(node))
        .route("/ws", get(super::ws::upgrade))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .nest("/api/v1", api)
        .merge(super::device_api::public())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(app)
}

async fn health() -> Json<Value> {
    Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "features": ["claim", "long_poll", "leases", "events", "cancel", "dlq", "websocket", SETTLE_EVENT_FEATURE, SETTLE_EVENTS_FEATURE, CLAIM_EVENT_FEATURE, BATCH_FEATURE],
    }))
}

#[derive(Debug, Deserialize)]
struct WaitQuery {
    /// Long-poll: seconds to wait for a job before answering 204.
    wait: Option<f64>,
}

fn wait_of(secs: Option<f64>) -> Duration {
    match secs {
        Some(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s).min(MAX_WAIT),
        _ => Duration::ZERO,
    }
}

/// Claims up to `max` jobs of `who`'s organization, waiting up to `wait` for one to become ready;
/// a node whose credential is revoked meanwhile is refused (401) instead of given a job. With
/// `claimed`, each job handed out gets its `claimed` event (that data) in the same write.
#[allow(clippy::too_many_arguments)]
async fn claim_wait(
    app: &AppState,
    who: &Principal,
    offer: &Offer,
    worker: &str,
    max: usize,
    lease: Duration,
    wait: Duration,
    claimed: Option<&Value>,
) -> ApiResult<Vec<JobRecord>> {
    let store = &app.store;
    let deadline = tokio::time::Instant::now() + wait;
    let mut ready = store.subscribe_ready();
    loop {
        ready.borrow_and_update();
        if who.node_id().is_some_and(|n| !app.credentials.is_live(n)) {
            return Err(ApiError(StatusCode::UNAUTHORIZED, REVOKED.into()));
        }
        let got = store.claim_announced(&who.org, offer, worker, max, lease, claimed)?;
        if !got.is_empty() {
            store.flush().await?;
            return Ok(got);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(got);
        }
        // A retry whose delay ends, or a lease that expires, does not bump `ready`: look again
        // at least every 250 ms.
        let nap = (deadline - now).min(Duration::from_millis(250));
        let _ = tokio::time::timeout(nap, ready.changed()).await;
    }
}

/// The docs/wire-format.md#nexus-http payload: every value a string.
fn stringly(payload: &Map<String, Value>) -> Map<String, Value> {
    payload
        .iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k.clone(), Value::String(s))
        })
        .collect()
}

/// `GET /api/v1/jobs/next[?wait=S]` (docs/wire-format.md#nexus-http): 200 `{"id","type","payload"}` or 204. The lease
/// travels in headers so the body stays the Go agent's format byte for byte.
async fn next_job(
    State(app): St,
    Extension(who): Extension<Principal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<WaitQuery>,
) -> ApiResult<Response> {
    let worker = format!("poller@{}", peer.ip());
    let wait = wait_of(q.wait);
    let offer = Offer::default();
    let mut got = claim_wait(&app, &who, &offer, &worker, 1, DEFAULT_LEASE, wait, None).await?;
    let Some(r) = got.pop() else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    #[derive(serde::Serialize)]
    struct Wire<'a> {
        id: &'a str,
        #[serde(rename = "type")]
        job_type: &'a str,
        payload: Map<String, Value>,
    }
    let body = Wire {
        id: &r.id,
        job_type: &r.job_type,
        payload: stringly(&r.payload),
    };
    let mut resp = Json(body).into_response();
    if let Some(l) = &r.lease {
        if let Ok(v) = HeaderValue::from_str(&l.id) {
            resp.headers_mut().insert("x-citadel-lease-id", v);
        }
    }
    resp.headers_mut()
        .insert("x-citadel-attempt", HeaderValue::from(r.attempts));
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: String,
    #[serde(default)]
    output: Option<String>,
}

/// `POST /api/v1/jobs/{id}/status` (docs/wire-format.md#nexus-http) → 204.
async fn report_status(
    State(app): St,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<StatusCode> {
    let b: StatusBody = parse(body)?;
    let success = match b.status.as_str() {
        "SUCCESS" => true,
        "FAILURE" => false,
        other => {
            return Err(ApiError::bad(format!(
                "status must be SUCCESS or FAILURE, not {other:?}"
            )))
        }
    };
    app.store.report_status(&id, success, b.output)?;
    app.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A node as docs/wire-format.md#nexus-http lists it: `{id, name, ip_address, status, last_seen}`.
fn node_json(n: &NodeRecord, now: u64) -> Value {
    let online = now.saturating_sub(n.last_seen_ms) < NODE_OFFLINE_AFTER.as_millis() as u64;
    json!({
        "id": n.id,
        "name": n.name,
        "ip_address": n.ip_address,
        "status": if online { n.status.as_str() } else { "offline" },
        "last_seen": rfc3339_ms(n.last_seen_ms),
    })
}

/// `GET /api/v1/nodes` (docs/wire-format.md#nexus-http).
async fn nodes(State(app): St) -> ApiResult<Json<Value>> {
    let now = now_ms();
    let list: Vec<Value> = app
        .store
        .nodes()?
        .iter()
        .map(|n| node_json(n, now))
        .collect();
    Ok(Json(Value::Array(list)))
}

/// `GET /api/v1/nodes/{id}`: the node with its last status report (docs/wire-format.md#heartbeat) as `report`.
async fn node(State(app): St, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let found = app.store.nodes()?.into_iter().find(|n| n.id == id);
    let n = found.ok_or_else(|| ApiError(StatusCode::NOT_FOUND, format!("no node `{id}`")))?;
    let mut v = node_json(&n, now_ms());
    v["report"] = n.report.unwrap_or(Value::Null);
    Ok(Json(v))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    status: Option<String>,
    /// The node's full status message (docs/wire-format.md#heartbeat), when the worker sends one.
    #[serde(default)]
    report: Option<Value>,
}

async fn heartbeat(
    State(app): St,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> ApiResult<StatusCode> {
    let b: HeartbeatBody = parse(body)?;
    if b.id.is_empty() || b.id.len() > 256 {
        return Err(ApiError::bad("`id` must be 1 to 256 characters"));
    }
    app.store.heartbeat(NodeRecord {
        name: b.name.unwrap_or_else(|| b.id.clone()),
        id: b.id,
        ip_address: peer.ip().to_string(),
        status: b.status.unwrap_or_else(|| "online".into()),
        last_seen_ms: now_ms(),
        report: b.report,
    })?;
    app.store.flush().await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn submit(State(app): St, body: Body) -> ApiResult<(StatusCode, Json<JobRecord>)> {
    let new: NewJob = parse(body)?;
    if let Some(org) = &new.org {
        auth::valid_org(org).map_err(ApiError::bad)?;
    }
    let r = app.store.submit(new)?;
    app.store.flush().await?;
    tracing::info!(job_id = %r.id, job_type = %r.job_type, "job submitted");
    Ok((StatusCode::CREATED, Json(r)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

async fn list_jobs(State(app): St, Query(q): Query<ListQuery>) -> ApiResult<Json<Value>> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(QueueState::parse(s).ok_or_else(|| {
            ApiError::bad(format!(
                "unknown state {s:?} (queued, leased, succeeded, failed, cancelled, dead)"
            ))
        })?),
    };
    let jobs = app.store.list(state, q.limit.unwrap_or(100).min(10_000));
    Ok(Json(json!({ "jobs": jobs })))
}

async fn show_job(State(app): St, Path(id): Path<String>) -> ApiResult<Json<JobRecord>> {
    Ok(Json(app.store.get(&id)?))
}

/// `POST /api/v1/jobs/claim`: citadel's own claim, with the payload as sent, the attempt and the
/// lease.
async fn claim(
    State(app): St,
    Extension(who): Extension<Principal>,
    body: Body,
) -> ApiResult<Json<Value>> {
    let b: ClaimRequest = parse(body)?;
    let max = b.max.clamp(1, 1000);
    let wait = Duration::from_millis(b.wait_ms).min(MAX_WAIT);
    let lease = lease_of(b.lease_ms);
    let offer = Offer {
        tags: b.tags,
        node: b.node,
    };
    if b.claimed.as_ref().is_some_and(|d| !d.is_object()) {
        return Err(ApiError::bad(
            "`claimed` is the data object of a `claimed` event",
        ));
    }
    let claimed = b.claimed.as_ref();
    let got = claim_wait(&app, &who, &offer, &b.worker, max, lease, wait, claimed).await?;
    Ok(Json(json!({ "jobs": got })))
}

async fn renew(
    State(app): St,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Json<RenewResponse>> {
    let b: RenewRequest = parse(body)?;
    let (r, durable) = app.store.renew(&id, &b.lease_id, lease_of(b.lease_ms))?;
    if durable {
        app.store.flush().await?;
    }
    Ok(Json(RenewResponse {
        lease_expires_ms: r.lease.as_ref().map(|l| l.expires_ms),
        cancel_requested: r.cancel_requested,
    }))
}

async fn settle(State(app): St, Path(id): Path<String>, body: Body) -> ApiResult<Json<JobRecord>> {
    let r = settle_one(&app, &id, parse(body)?)?;
    app.store.flush().await?;
    Ok(Json(r))
}

/// Applies one settlement with the events it carries (not yet flushed).
fn settle_one(app: &AppState, id: &str, b: SettleRequest) -> ApiResult<JobRecord> {
    let how = settle_of(
        &b.action,
        b.delay_ms,
        b.reason,
        b.errors,
        b.outcome.as_deref(),
    )?;
    let events: Vec<&Value> = b.events.iter().chain(&b.event).collect();
    for ev in &events {
        check_event(id, ev)?;
    }
    Ok(app.store.settle_recording(id, &b.lease_id, &events, how)?)
}

/// `POST /api/v1/jobs/batch`: each operation as its own endpoint would apply it, then one flush
/// covering them all before the answer; one result per operation. Another organization's job
/// is answered 404, as on its own endpoint.
async fn batch(
    State(app): St,
    Extension(who): Extension<Principal>,
    body: Body,
) -> ApiResult<Json<BatchResponse>> {
    let b: BatchRequest = parse(body)?;
    if b.ops.len() > MAX_BATCH {
        return Err(ApiError::bad(format!(
            "a batch carries at most {MAX_BATCH} operations"
        )));
    }
    let mut flush = false;
    let results = b
        .ops
        .into_iter()
        .map(|op| match batch_op(&app, &who, op) {
            Ok(durable) => {
                flush |= durable;
                BatchResult {
                    status: 200,
                    error: None,
                }
            }
            Err(ApiError(status, msg)) => BatchResult {
                status: status.as_u16(),
                error: Some(msg),
            },
        })
        .collect();
    if flush {
        app.store.flush().await?;
    }
    Ok(Json(BatchResponse { results }))
}

/// Applies one batch operation (not yet flushed); whether its answer must wait for the flush.
fn batch_op(app: &AppState, who: &Principal, op: BatchOp) -> ApiResult<bool> {
    let job = match &op {
        BatchOp::Events { job, .. } | BatchOp::Settle { job, .. } => job.clone(),
    };
    if !who.may_touch(&app.store.org_of(&job)?) {
        return Err(StoreError::NotFound(job).into());
    }
    match op {
        BatchOp::Settle { settle, .. } => settle_one(app, &job, settle).map(|_| true),
        BatchOp::Events {
            lease_id, events, ..
        } => {
            let events: Vec<&Value> = events.iter().collect();
            record_events(&app.store, &job, Some(&lease_id), &events)
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn cancel(State(app): St, Path(id): Path<String>, body: Body) -> ApiResult<Json<JobRecord>> {
    let empty = body.as_ref().map(|b| b.is_empty()).unwrap_or(false);
    let b: CancelBody = if empty {
        CancelBody::default()
    } else {
        parse(body)?
    };
    let reason = b
        .reason
        .unwrap_or_else(|| "cancelled by the producer".into());
    let r = app.store.cancel(&id, &reason)?;
    app.store.flush().await?;
    tracing::info!(job_id = %id, state = ?r.state, "cancellation requested");
    Ok(Json(r))
}

#[derive(Debug, Deserialize)]
struct EventQuery {
    /// The reporting worker's lease: the event counts only while it is the job's current one.
    lease_id: Option<String>,
}

async fn append_event(
    State(app): St,
    Path(id): Path<String>,
    Query(q): Query<EventQuery>,
    body: Body,
) -> ApiResult<StatusCode> {
    let ev: Value = parse(body)?;
    if record_event(&app.store, &id, q.lease_id.as_deref(), &ev)? {
        app.store.flush().await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn dlq(State(app): St) -> Json<Value> {
    Json(json!({ "jobs": app.store.list(Some(QueueState::Dead), 10_000) }))
}

async fn requeue(State(app): St, Path(id): Path<String>) -> ApiResult<Json<JobRecord>> {
    let r = app.store.requeue(&id)?;
    app.store.flush().await?;
    Ok(Json(r))
}
