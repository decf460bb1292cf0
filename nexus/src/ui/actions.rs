//! The console's actions: sign in and out, and the forms that change jobs (submit, cancel,
//! requeue, purge), each answered with a 303 to the page that shows the result, plus the job's
//! live event stream for a signed-in session. The gates of [`super`] run around these: the
//! Origin check, the read-only refusal, and the flush that makes what an action wrote durable
//! before its answer; so an action only does its work, and changes jobs only through the
//! store's operations. It must never log or echo a token.

use std::sync::Arc;

use axum::extract::{Extension, Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::views::{encode, FilterForm, Frame, LoginPage, SubmitPage};
use super::{over_tls, render, see_other, session, Ui, Viewer};
use crate::common::ApiError;
use crate::record::NewJob;
use crate::store::{now_ms, StoreError};

type St = State<Arc<Ui>>;

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

impl std::fmt::Debug for LoginForm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoginForm { token: <hidden> }")
    }
}

/// `POST /ui/login`: the token for a session cookie, or the login page again (401).
pub async fn login(State(ui): St, headers: HeaderMap, Form(form): Form<LoginForm>) -> Response {
    let now = now_ms();
    let Some((role, token_id)) = ui.tokens.role_of(&ui.app, form.token.trim(), now) else {
        tracing::info!("console sign-in refused: unknown token");
        let page = render(&LoginPage {
            frame: Frame::new("Sign in", "login", None),
            error: Some("That token is not the admin token or a console token.".into()),
        });
        return (StatusCode::UNAUTHORIZED, page).into_response();
    };
    let id = ui.sessions.open(role, token_id, now);
    tracing::info!(role = ?role, sessions = ui.sessions.len(), "console session opened");
    with_cookie(
        see_other("/ui/"),
        &session::set_cookie(&id, over_tls(&headers)),
    )
}

fn with_cookie(mut resp: Response, cookie: &str) -> Response {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /ui/logout`.
pub async fn logout(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    headers: HeaderMap,
) -> Response {
    ui.sessions.end(&v.session);
    with_cookie(
        see_other("/ui/login"),
        &session::clear_cookie(over_tls(&headers)),
    )
}

/// A store error as the console answers it.
pub(super) fn failed(e: StoreError) -> Response {
    let e = ApiError::from(e);
    (e.0, e.1).into_response()
}

#[derive(Debug, Deserialize)]
pub struct SubmitForm {
    #[serde(rename = "type")]
    job_type: String,
    #[serde(default)]
    payload: String,
    #[serde(default)]
    max_attempts: String,
}

/// The job a submit form describes, or why not.
fn new_job(f: &SubmitForm) -> Result<NewJob, String> {
    let ty = f.job_type.trim();
    if ty.is_empty() {
        return Err("the type is required".into());
    }
    let payload: Map<String, Value> = match f.payload.trim() {
        "" => Map::new(),
        text => serde_json::from_str(text)
            .map_err(|e| format!("the payload is not a JSON object: {e}"))?,
    };
    let max_attempts = match f.max_attempts.trim() {
        "" => None,
        n => Some(
            n.parse::<u32>()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or("max attempts is a number from 1 to 1000")?,
        ),
    };
    serde_json::from_value(serde_json::json!({
        "type": ty, "payload": payload, "maxAttempts": max_attempts,
    }))
    .map_err(|e| e.to_string())
}

/// `POST /ui/jobs`: 303 to the new job, or the form again with the reason (400).
pub async fn submit(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Form(f): Form<SubmitForm>,
) -> Response {
    let job = match new_job(&f) {
        Ok(job) => job,
        Err(e) => return form_again(&v, &f, e),
    };
    match ui.app.store.submit(job) {
        Ok(r) => {
            tracing::info!(job_id = %r.id, job_type = %r.job_type, "job submitted from the console");
            see_other(&format!("/ui/jobs/{}", encode(&r.id)))
        }
        Err(e) if e.is_retryable() => failed(e),
        Err(e) => form_again(&v, &f, e.to_string()),
    }
}

/// The submit form again, as it was filled, with why it was refused (400).
fn form_again(v: &Viewer, f: &SubmitForm, error: String) -> Response {
    let page = render(&SubmitPage {
        frame: Frame::new("Submit", "submit", Some(v.role)),
        error: Some(error),
        job_type: f.job_type.clone(),
        payload: f.payload.clone(),
        max_attempts: f.max_attempts.clone(),
    });
    (StatusCode::BAD_REQUEST, page).into_response()
}

/// `POST /ui/jobs/{id}/cancel`: 303 back to the job.
pub async fn cancel(State(ui): St, Path(id): Path<String>) -> Response {
    if let Err(e) = ui.app.store.cancel(&id, "cancelled from the console") {
        return failed(e);
    }
    tracing::info!(job_id = %id, "cancellation requested from the console");
    see_other(&format!("/ui/jobs/{}", encode(&id)))
}

/// `POST /ui/dlq/{id}/requeue`: 303 back to the dead letters.
pub async fn requeue(State(ui): St, Path(id): Path<String>) -> Response {
    if let Err(e) = ui.app.store.requeue(&id) {
        return failed(e);
    }
    tracing::info!(job_id = %id, "dead letter requeued from the console");
    see_other("/ui/dlq")
}

/// `POST /ui/dlq/{id}/purge`: 303 back to the dead letters.
pub async fn purge_one(State(ui): St, Path(id): Path<String>) -> Response {
    purge(&ui, &[id])
}

/// `POST /ui/dlq/purge` (from the confirmation page): every dead letter the filter admits.
pub async fn purge_all(State(ui): St, Form(form): Form<FilterForm>) -> Response {
    match super::pages::dead_matching(&ui, &form) {
        Ok(list) => purge(&ui, &list.into_iter().map(|r| r.id).collect::<Vec<_>>()),
        Err(e) => (StatusCode::BAD_REQUEST, e).into_response(),
    }
}

fn purge(ui: &Ui, ids: &[String]) -> Response {
    let store = &ui.app.store;
    let mut purged = 0;
    for id in ids {
        match store.purge(id) {
            Ok(_) => purged += 1,
            // Requeued meanwhile: not a dead letter any more, so not purged.
            Err(StoreError::Invalid(_) | StoreError::NotFound(_)) => {}
            Err(e) => return failed(e),
        }
    }
    tracing::info!(purged, "dead letters purged from the console");
    see_other("/ui/dlq")
}

/// `GET /ui/jobs/{id}/events`: the job's event stream (the API's SSE) for a signed-in session.
pub async fn events(
    State(ui): St,
    path: Path<String>,
    query: axum::extract::Query<crate::sse::EventsQuery>,
    headers: HeaderMap,
) -> Response {
    crate::sse::events(State(ui.app.clone()), path, query, headers)
        .await
        .into_response()
}
