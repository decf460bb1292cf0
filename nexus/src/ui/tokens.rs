//! Read-only console tokens: the admin issues one for a person who may look at the console but
//! change nothing (`POST /api/v1/console/tokens`, or the tokens page; the plain token in that
//! answer and nowhere else), lists them (`GET /api/v1/console/tokens`) and revokes one
//! (`POST /api/v1/console/tokens/{id}/revoke`). Only its SHA-256 is kept, in the store's
//! `console_tokens` tree (the records and revocation are [`crate::kept_tokens`]'s), durable
//! before the answer. It also decides what a token typed on the login page opens: the admin
//! token an admin session, a live console token a read-only one, and whether a session's token
//! is still live. It must never keep, log or show a plain token.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::session::Role;
use crate::common::{parse, ApiError, ApiResult, AppState, Body};
use crate::credentials::{same, sha256_hex};
use crate::kept_tokens::{admin, check_lifetime, expiry, kept, Kept, KeptTokens};
use crate::store::{now_ms, rfc3339_ms};

/// The longest name accepted.
const MAX_NAME: usize = 128;

/// A console token as kept: never the token, only its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConsoleToken {
    pub id: String,
    /// Who it is for.
    pub name: String,
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    hash: String,
}

kept!(ConsoleToken, "console token");

impl ConsoleToken {
    /// As the admin's list shows it (no hash, no token).
    pub fn view(&self, now_ms: u64) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "role": "read-only",
            "state": self.state(now_ms),
            "created_at": rfc3339_ms(self.created_ms),
            "expires_at": self.expires_ms.map(rfc3339_ms),
            "revoked_at": self.revoked_ms.map(rfc3339_ms),
        })
    }
}

/// The console tokens, in the store's `console_tokens` tree.
#[derive(Debug)]
pub struct ConsoleTokens {
    kept: KeptTokens<ConsoleToken>,
}

/// What a create request asks for.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// Who it is for (shown in the list).
    #[serde(default)]
    pub name: Option<String>,
    /// Lifetime in seconds; none: until revoked.
    #[serde(default)]
    pub expires_in_s: Option<u64>,
}

impl ConsoleTokens {
    pub fn open(app: &AppState) -> Result<Self, crate::store::StoreError> {
        Ok(Self {
            kept: KeptTokens::open(&app.store, "console_tokens")?,
        })
    }

    /// What `token` opens at `now_ms`: the admin token an admin session, a live console token a
    /// read-only one (with the token's id).
    pub fn role_of(
        &self,
        app: &AppState,
        token: &str,
        now_ms: u64,
    ) -> Option<(Role, Option<String>)> {
        if same(token.as_bytes(), app.token.as_bytes()) {
            return Some((Role::Admin, None));
        }
        let hash = sha256_hex(token);
        let t =
            self.kept.all().ok()?.into_iter().find(|t| {
                same(t.hash.as_bytes(), hash.as_bytes()) && t.state(now_ms) == "active"
            })?;
        Some((Role::ReadOnly, Some(t.id)))
    }

    /// Whether token `id` still opens sessions at `now_ms` (not revoked, not expired).
    pub fn live(&self, id: &str, now_ms: u64) -> bool {
        matches!(self.kept.get(id), Ok(Some(t)) if t.state(now_ms) == "active")
    }

    /// Every token, oldest first.
    pub fn all(&self) -> ApiResult<Vec<ConsoleToken>> {
        self.kept.all()
    }

    /// Mints a token as `b` asks: the plain token (to show once) and its record, written; the
    /// caller flushes before it answers.
    pub fn create(&self, app: &AppState, b: CreateBody) -> ApiResult<(String, ConsoleToken)> {
        let name = b.name.unwrap_or_default().trim().to_string();
        if name.len() > MAX_NAME || name.chars().any(char::is_control) {
            return Err(ApiError::bad(format!(
                "`name` must be at most {MAX_NAME} characters without control characters"
            )));
        }
        check_lifetime(b.expires_in_s).map_err(ApiError::bad)?;
        let token = crate::ids::new_secret();
        let now = now_ms();
        let t = ConsoleToken {
            id: format!("ct-{}", crate::ids::new_lease_id()),
            name,
            created_ms: now,
            expires_ms: expiry(now, b.expires_in_s),
            revoked_ms: None,
            hash: sha256_hex(&token),
        };
        self.kept.put(&app.store, &t)?;
        tracing::info!(id = %t.id, name = %t.name, "read-only console token created");
        Ok((token, t))
    }

    /// Revokes token `id` (404 when unknown); its sessions end at their next request. The
    /// caller flushes before it answers.
    pub fn revoke(&self, app: &AppState, id: &str) -> ApiResult<ConsoleToken> {
        let t = self
            .kept
            .revoke(&app.store, id, now_ms())?
            .ok_or_else(|| ApiError::not_found(format!("no console token {id}")))?;
        tracing::info!(id = %t.id, "console token revoked");
        Ok(t)
    }
}

#[derive(Debug)]
struct TokState {
    app: Arc<AppState>,
    tokens: Arc<ConsoleTokens>,
}

type St = State<Arc<TokState>>;

/// `GET`/`POST /api/v1/console/tokens`, `POST /api/v1/console/tokens/{id}/revoke` (admin token
/// only).
pub fn router(app: Arc<AppState>, tokens: Arc<ConsoleTokens>) -> Router {
    Router::new()
        .route("/api/v1/console/tokens", post(create).get(list))
        .route("/api/v1/console/tokens/{id}/revoke", post(revoke))
        .with_state(Arc::new(TokState { app, tokens }))
}

async fn create(
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin(&s.app, &headers)?;
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let b: CreateBody = if empty {
        CreateBody::default()
    } else {
        parse(body)?
    };
    let (token, t) = s.tokens.create(&s.app, b)?;
    s.app.store.flush().await?;
    let mut v = t.view(t.created_ms);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

async fn list(State(s): St, headers: HeaderMap) -> ApiResult<Json<Value>> {
    admin(&s.app, &headers)?;
    let now = now_ms();
    let tokens: Vec<Value> = s.tokens.all()?.iter().map(|t| t.view(now)).collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// Revoking twice keeps the first time.
async fn revoke(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    admin(&s.app, &headers)?;
    let t = s.tokens.revoke(&s.app, &id)?;
    s.app.store.flush().await?;
    Ok(Json(t.view(now_ms())))
}
