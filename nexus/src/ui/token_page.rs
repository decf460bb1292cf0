//! The console-token page (`/ui/tokens`, the admin's only): the tokens listed (name, state,
//! created, expires; never a token or hash), a form that creates one and shows its plain token
//! this once, and a form per token that revokes it (303 back to the list). The gates of
//! [`super`] (Origin, the read-only refusal, the flush before the answer) run around the forms;
//! the records are [`super::tokens`]'s. It must never show a token anywhere but the answer that
//! created it.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Extension, Form, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::tokens::CreateBody;
use super::views::{encode, Frame};
use super::{render, see_other, Ui, Viewer};
use crate::common::ApiError;
use crate::kept_tokens::Kept;
use crate::store::{now_ms, rfc3339_ms};

type St = State<Arc<Ui>>;

/// One token as the page lists it.
#[derive(Debug)]
pub struct TokenRow {
    pub id: String,
    pub enc: String,
    pub name: String,
    pub state: &'static str,
    pub created_at: String,
    pub expires_at: String,
}

#[derive(Template)]
#[template(path = "tokens.html")]
pub struct TokensPage {
    pub frame: Frame,
    pub rows: Vec<TokenRow>,
    /// The token just created, shown this once.
    pub created: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    name: String,
    /// Days it lives; empty: until revoked.
    #[serde(default)]
    days: String,
}

/// The page, with the token just created or why it was not.
fn page(ui: &Ui, v: &Viewer, created: Option<String>, error: Option<String>) -> Response {
    let now = now_ms();
    let rows = match ui.tokens.all() {
        Ok(all) => all
            .iter()
            .map(|t| TokenRow {
                id: t.id.clone(),
                enc: encode(&t.id),
                name: t.name.clone(),
                state: t.state(now),
                created_at: rfc3339_ms(t.created_ms),
                expires_at: t.expires_ms.map(rfc3339_ms).unwrap_or_default(),
            })
            .collect(),
        Err(e) => return (e.0, e.1).into_response(),
    };
    render(&TokensPage {
        frame: Frame::new("Console tokens", "tokens", Some(v.role)),
        rows,
        created,
        error,
    })
}

/// `GET /ui/tokens` (admin only: 403 for a read-only session).
pub async fn list(State(ui): St, Extension(v): Extension<Viewer>) -> Response {
    if let Some(r) = v.refused() {
        return r;
    }
    page(&ui, &v, None, None)
}

/// `POST /ui/tokens`: the page again, with the new token shown once (or why not, 400).
pub async fn create(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Form(f): Form<CreateForm>,
) -> Response {
    let days = match f.days.trim() {
        "" => Ok(None),
        d => d
            .parse::<u64>()
            .map(|d| Some(d.saturating_mul(24 * 3600)))
            .map_err(|_| ApiError::bad("days is a whole number")),
    };
    let made = days.and_then(|expires_in_s| {
        let body = CreateBody {
            name: Some(f.name.clone()),
            expires_in_s,
        };
        ui.tokens.create(&ui.app, body)
    });
    match made {
        Ok((token, _)) => page(&ui, &v, Some(token), None),
        Err(e) if e.0 == StatusCode::BAD_REQUEST => {
            let mut r = page(&ui, &v, None, Some(e.1));
            *r.status_mut() = StatusCode::BAD_REQUEST;
            r
        }
        Err(e) => (e.0, e.1).into_response(),
    }
}

/// `POST /ui/tokens/{id}/revoke`: 303 back to the list.
pub async fn revoke(State(ui): St, Path(id): Path<String>) -> Response {
    match ui.tokens.revoke(&ui.app, &id) {
        Ok(_) => see_other("/ui/tokens"),
        Err(e) => (e.0, e.1).into_response(),
    }
}
