//! Read-only console tokens: the admin issues one (`POST /api/v1/console/tokens`, the plain token
//! in that answer and nowhere else) for a person who may look at the console but change nothing.
//! Only its SHA-256 is kept, in the store's `console_tokens` tree, durable before the answer.
//! It also decides what a token typed on the login page opens: the admin token an admin
//! session, a console token a read-only one. It must never keep, log or show a plain token.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::session::Role;
use crate::api::{principal, REVOKED};
use crate::auth::{authorize, Need};
use crate::common::{parse, ApiError, ApiResult, AppState, Body};
use crate::credentials::{same, sha256_hex};
use crate::store::{now_ms, rfc3339_ms, StoreError};

/// A console token as kept: never the token, only its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ConsoleToken {
    id: String,
    name: String,
    created_ms: u64,
    hash: String,
}

/// The console tokens, in the store's `console_tokens` tree.
#[derive(Debug)]
pub struct ConsoleTokens {
    tree: sled::Tree,
}

fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(StoreError::Storage(std::io::Error::other(e.to_string())))
}

impl ConsoleTokens {
    pub fn open(app: &AppState) -> Result<Self, StoreError> {
        Ok(Self {
            tree: app.store.tree("console_tokens")?,
        })
    }

    /// What `token` opens: the admin token an admin session, a console token a read-only one.
    pub fn role_of(&self, app: &AppState, token: &str) -> Option<Role> {
        if same(token.as_bytes(), app.token.as_bytes()) {
            return Some(Role::Admin);
        }
        let hash = sha256_hex(token);
        let found = self.tree.iter().filter_map(Result::ok).any(|(_, v)| {
            serde_json::from_slice::<ConsoleToken>(&v)
                .is_ok_and(|t| same(t.hash.as_bytes(), hash.as_bytes()))
        });
        found.then_some(Role::ReadOnly)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    /// Who it is for (shown in the list).
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug)]
struct TokState {
    app: Arc<AppState>,
    tokens: Arc<ConsoleTokens>,
}

/// `POST /api/v1/console/tokens` (admin token only).
pub fn router(app: Arc<AppState>, tokens: Arc<ConsoleTokens>) -> Router {
    Router::new()
        .route("/api/v1/console/tokens", post(create))
        .with_state(Arc::new(TokState { app, tokens }))
}

async fn create(
    State(s): State<Arc<TokState>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let who = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| principal(&s.app, t.trim()))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, REVOKED.into()))?;
    authorize(&who, Need::Admin).map_err(|d| ApiError(StatusCode::FORBIDDEN, d.0))?;
    let empty = body.as_ref().is_ok_and(|b| b.is_empty());
    let b: CreateBody = if empty {
        CreateBody { name: None }
    } else {
        parse(body)?
    };
    let name = b.name.unwrap_or_default().trim().to_string();
    if name.len() > 128 || name.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "`name` must be at most 128 characters without control characters",
        ));
    }
    let token = crate::ids::new_secret();
    let now = now_ms();
    let t = ConsoleToken {
        id: format!("ct-{}", crate::ids::new_lease_id()),
        name,
        created_ms: now,
        hash: sha256_hex(&token),
    };
    let bytes = serde_json::to_vec(&t).map_err(storage)?;
    s.tokens
        .tree
        .insert(t.id.as_bytes(), bytes)
        .map_err(storage)?;
    s.app.store.wrote();
    s.app.store.flush().await?;
    tracing::info!(id = %t.id, name = %t.name, "read-only console token created");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": t.id, "name": t.name, "created_at": rfc3339_ms(now), "token": token,
            "role": "read-only",
        })),
    ))
}
