//! What the control plane's request handlers share (the HTTP routes of [`super::api`], the
//! WebSocket of [`super::ws`], the SSE stream of [`super::sse`] and device authorization): the
//! application state, the API error and its `{"error": MESSAGE}` shape, body parsing, and the
//! checks that turn a request into a store operation (lease length, settlement, job event). It
//! holds no job state and must never log the token.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::store::{LeaseSettle, Outcome, Reporter, Store, StoreError, DEFAULT_LEASE};

/// The largest request body accepted (a job payload travels in one).
pub const MAX_BODY: usize = 16 * 1024 * 1024;
/// The longest long-poll a request may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The admin token.
    pub token: String,
    /// The nodes' own credentials (credentials.rs).
    pub credentials: super::credentials::Credentials,
    pub device: super::device::DeviceAuth,
}

/// An API error: a status and a message, sent as `{"error": MESSAGE}`.
#[derive(Debug)]
pub struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl ApiError {
    pub(crate) fn bad(msg: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, msg.into())
    }

    pub(crate) fn not_found(msg: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, msg.into())
    }

    pub(crate) fn conflict(msg: impl Into<String>) -> Self {
        Self(StatusCode::CONFLICT, msg.into())
    }

    pub(crate) fn unavailable(msg: impl Into<String>) -> Self {
        Self(StatusCode::SERVICE_UNAVAILABLE, msg.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.0, Json(json!({ "error": self.1 }))).into_response();
        if self.0 == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let status = match &e {
            StoreError::NotFound(_) => StatusCode::NOT_FOUND,
            StoreError::Exists(_) | StoreError::LeaseLost(_) => StatusCode::CONFLICT,
            StoreError::Invalid(_) => StatusCode::BAD_REQUEST,
            // The write could not be made durable (disk full, I/O error): nothing was
            // acknowledged, and the same request may succeed once the disk has room again.
            StoreError::Storage(_) => {
                tracing::error!(error = %e, "control plane storage error");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        Self(status, e.to_string())
    }
}

pub(crate) type ApiResult<T> = Result<T, ApiError>;

/// Parses a JSON body, answering 400 with serde's message when it is not what was expected.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> ApiResult<T> {
    let body = body.map_err(|e| ApiError(e.status(), e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

pub(crate) type Body = Result<Bytes, axum::extract::rejection::BytesRejection>;

pub(crate) fn lease_of(ms: Option<u64>) -> Duration {
    ms.filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_LEASE)
}

/// A worker's settlement as the store applies it (the HTTP API and the WebSocket push alike).
pub(crate) fn settle_of(
    action: &str,
    delay_ms: u64,
    reason: Option<String>,
    errors: Vec<String>,
    outcome: Option<&str>,
) -> ApiResult<LeaseSettle> {
    let outcome = match outcome {
        None => None,
        Some(o) => Some(Outcome::of_event(o).ok_or_else(|| {
            ApiError::bad(format!(
                "outcome must be end, error or cancelled, not {o:?}"
            ))
        })?),
    };
    Ok(match action {
        "ack" => LeaseSettle::Ack { outcome },
        "retry" => LeaseSettle::Retry {
            delay: Duration::from_millis(delay_ms),
            error: errors.last().cloned(),
        },
        "dead_letter" => LeaseSettle::DeadLetter {
            reason: reason.unwrap_or_else(|| "dead-lettered by the worker".into()),
            errors,
        },
        "release" => LeaseSettle::Release,
        other => {
            return Err(ApiError::bad(format!(
                "action must be ack, retry, dead_letter or release, not {other:?}"
            )))
        }
    })
}

/// Checks that `ev` is a job event (docs/wire-format.md#job-events) about job `id`.
pub(crate) fn check_event(id: &str, ev: &Value) -> ApiResult<()> {
    if !ev.is_object() {
        return Err(ApiError::bad(
            "an event is a JSON object (docs/wire-format.md#job-events)",
        ));
    }
    if let Some(j) = ev.get("jobId").and_then(Value::as_str) {
        if j != id {
            return Err(ApiError::bad(format!(
                "the event is about job {j}, not {id}"
            )));
        }
    }
    Ok(())
}

/// Checks a job event (docs/wire-format.md#job-events) and records it (not yet flushed). A
/// worker names its lease (`lease`): the event is refused (409) unless that lease is current.
/// Returns whether the answer must wait for [`Store::flush`]: not for a leased worker's
/// non-terminal event (`claimed`, `start`, chunks), which the flush of the attempt's
/// settlement makes durable (sled writes are ordered; the settlement carries the outcome);
/// a terminal event, or one reported without a lease, is durable before it is answered.
pub(crate) fn record_event(
    store: &Store,
    id: &str,
    lease: Option<&str>,
    ev: &Value,
) -> ApiResult<bool> {
    record_events(store, id, lease, &[ev])
}

/// [`record_event`] of several events in order, the job's record written once: as that many
/// requests would, the events before the first refused one stay recorded and the refusal is
/// the answer.
pub(crate) fn record_events(
    store: &Store,
    id: &str,
    lease: Option<&str>,
    events: &[&Value],
) -> ApiResult<bool> {
    let checked = events.iter().take_while(|ev| check_event(id, ev).is_ok());
    let valid: Vec<&Value> = checked.copied().collect();
    let by = match lease {
        Some(l) => Reporter::Lease(l),
        None => Reporter::Unleased,
    };
    if !valid.is_empty() {
        store.append_events(id, by, &valid)?;
    }
    if let Some(bad) = events.get(valid.len()) {
        check_event(id, bad)?;
    }
    let terminal = valid.iter().any(|ev| {
        ev.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| Outcome::of_event(t).is_some())
    });
    Ok(lease.is_none() || terminal)
}
