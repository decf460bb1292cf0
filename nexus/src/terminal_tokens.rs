//! Terminal tokens (docs/terminal.md): the tokens a person uses to open a node's terminal. The
//! admin creates one for a user of an organization (`POST /api/v1/terminal/tokens`; the plain
//! token, 32 random bytes as hex, is in that answer and nowhere else), lists them
//! (`GET /api/v1/terminal/tokens`) and revokes one (`POST /api/v1/terminal/tokens/{id}/revoke`);
//! an enrolled node reads the SHA-256 hashes of its organization's live tokens
//! (`GET /api/fabric/terminal/tokens/{org}/hashes`) and checks a connecting client against them.
//! Only the hash is kept, in the store's `terminal_tokens` tree, and every change is durable
//! before the answer. This module owns those records and routes; it must never keep, log or list
//! a plain token, and never show a node another organization's hashes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{valid_org, DEFAULT_ORG};
use super::common::{parse, ApiError, ApiResult, AppState, Body};
use super::credentials::sha256_hex;
pub use super::kept_tokens::MAX_LIFETIME_S;
use super::kept_tokens::{admin, caller, check_lifetime, expiry, kept, Kept, KeptTokens};
use super::store::{now_ms, rfc3339_ms};
/// The longest user id accepted.
const MAX_USER: usize = 128;

/// A terminal token as kept: never the token itself, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TerminalToken {
    pub id: String,
    pub user_id: String,
    pub org_id: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// SHA-256 of the token, hex (what the nodes compare).
    pub hash: String,
}

impl TerminalToken {
    /// Whether a node of `org` may accept it at `now_ms`: its organization, not revoked, not
    /// expired.
    pub fn live_for(&self, org: &str, now_ms: u64) -> bool {
        self.org_id == org
            && self.revoked_ms.is_none()
            && self.expires_ms.is_none_or(|e| now_ms < e)
    }

    /// As the admin's list shows it (no hash, no token).
    fn view(&self, now_ms: u64) -> Value {
        json!({
            "id": self.id,
            "user_id": self.user_id,
            "org_id": self.org_id,
            "state": self.state(now_ms),
            "created_at": rfc3339_ms(self.created_ms),
            "expires_at": self.expires_ms.map(rfc3339_ms),
            "revoked_at": self.revoked_ms.map(rfc3339_ms),
        })
    }

    /// As a node reads it (docs/terminal.md#how-a-node-checks-a-token).
    fn hash_view(&self) -> Value {
        json!({
            "hash": self.hash,
            "user_id": self.user_id,
            "org_id": self.org_id,
            "expires_at": self.expires_ms.map(rfc3339_ms),
        })
    }
}

/// A fresh token for `user` of `org`: the plain token (to show once) and the record to keep.
pub fn mint(
    user: &str,
    org: &str,
    now_ms: u64,
    lifetime_s: Option<u64>,
) -> (String, TerminalToken) {
    let token = super::ids::new_secret();
    let record = TerminalToken {
        id: format!("tt-{}", super::ids::new_lease_id()),
        user_id: user.to_string(),
        org_id: org.to_string(),
        created_ms: now_ms,
        expires_ms: expiry(now_ms, lifetime_s),
        revoked_ms: None,
        hash: sha256_hex(&token),
    };
    (token, record)
}

kept!(TerminalToken, "terminal token");

#[derive(Debug)]
struct TermState {
    app: Arc<AppState>,
    tokens: KeptTokens<TerminalToken>,
}

type St = State<Arc<TermState>>;

/// The terminal-token routes, merged beside the API of [`super::api::router`].
pub fn router(app: Arc<AppState>) -> anyhow::Result<Router> {
    let tokens = KeptTokens::open(&app.store, "terminal_tokens")?;
    let state = Arc::new(TermState { app, tokens });
    Ok(Router::new()
        .route("/api/v1/terminal/tokens", post(create).get(list))
        .route("/api/v1/terminal/tokens/{id}/revoke", post(revoke))
        .route("/api/fabric/terminal/tokens/{org}/hashes", get(hashes))
        .with_state(state))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    user_id: String,
    #[serde(default)]
    org_id: Option<String>,
    /// Lifetime in seconds; none: until revoked.
    #[serde(default)]
    expires_in_s: Option<u64>,
}

/// Checks a create request: the user, the organization and the lifetime.
fn check(b: &CreateBody) -> Result<String, String> {
    let user = b.user_id.trim();
    if user.is_empty() || user.len() > MAX_USER || user.chars().any(char::is_control) {
        return Err(format!(
            "`user_id` must be 1 to {MAX_USER} characters without control characters"
        ));
    }
    let org = b.org_id.clone().unwrap_or_else(|| DEFAULT_ORG.to_string());
    valid_org(&org)?;
    check_lifetime(b.expires_in_s)?;
    Ok(org)
}

/// `POST /api/v1/terminal/tokens`: 201 with the plain token, shown this once.
async fn create(
    State(s): St,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Value>)> {
    admin(&s.app, &headers)?;
    let b: CreateBody = parse(body)?;
    let org = check(&b).map_err(ApiError::bad)?;
    let now = now_ms();
    let (token, record) = mint(b.user_id.trim(), &org, now, b.expires_in_s);
    s.tokens.put(&s.app.store, &record)?;
    s.app.store.flush().await?;
    tracing::info!(id = %record.id, user_id = %record.user_id, org = %record.org_id, "terminal token created");
    let mut v = record.view(now);
    v["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(v)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    org: Option<String>,
}

/// `GET /api/v1/terminal/tokens[?org=O]`: every token (never the token itself or its hash).
async fn list(
    State(s): St,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    admin(&s.app, &headers)?;
    let now = now_ms();
    let tokens: Vec<Value> = s
        .tokens
        .all()?
        .iter()
        .filter(|t| q.org.as_ref().is_none_or(|o| &t.org_id == o))
        .map(|t| t.view(now))
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// `POST /api/v1/terminal/tokens/{id}/revoke`: gone from the nodes' hashes once this answers.
/// Revoking twice keeps the first time.
async fn revoke(
    State(s): St,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    admin(&s.app, &headers)?;
    let now = now_ms();
    let t = s
        .tokens
        .revoke(&s.app.store, &id, now)?
        .ok_or_else(|| ApiError::not_found(format!("no terminal token {id}")))?;
    s.app.store.flush().await?;
    tracing::info!(id = %t.id, org = %t.org_id, "terminal token revoked");
    Ok(Json(t.view(now)))
}

/// `GET /api/fabric/terminal/tokens/{org}/hashes`: the live tokens' hashes of `org`, for a node
/// of that organization (or the admin).
async fn hashes(
    State(s): St,
    headers: HeaderMap,
    Path(org): Path<String>,
) -> ApiResult<Json<Value>> {
    let who = caller(&s.app, &headers)?;
    if !who.may_touch(&org) {
        tracing::info!(node_id = who.node_id(), org = %who.org, asked = %org, "a node asked for another organization's terminal tokens");
        return Err(ApiError(
            StatusCode::FORBIDDEN,
            format!(
                "node {} belongs to organization {}; it may not read the terminal tokens of {org}",
                who.node_id().unwrap_or(""),
                who.org
            ),
        ));
    }
    let now = now_ms();
    let tokens: Vec<Value> = s
        .tokens
        .all()?
        .iter()
        .filter(|t| t.live_for(&org, now))
        .map(TerminalToken::hash_view)
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

/// A token the plane mints for itself (the console's terminal): kept like the admin's, durable
/// on return; the plain token and the token's id.
pub(crate) async fn issue(
    app: &AppState,
    user: &str,
    org: &str,
    lifetime_s: u64,
) -> ApiResult<(String, String)> {
    let tokens = KeptTokens::<TerminalToken>::open(&app.store, "terminal_tokens")?;
    let (token, record) = mint(user, org, now_ms(), Some(lifetime_s));
    tokens.put(&app.store, &record)?;
    app.store.flush().await?;
    tracing::info!(id = %record.id, user_id = %user, %org, "terminal token minted for the console");
    Ok((token, record.id))
}

/// Revokes a token [`issue`] minted, durably.
pub(crate) async fn withdraw(app: &AppState, id: &str) -> ApiResult<()> {
    let tokens = KeptTokens::<TerminalToken>::open(&app.store, "terminal_tokens")?;
    tokens.revoke(&app.store, id, now_ms())?;
    app.store.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn only_the_hash_is_kept_and_it_is_the_tokens_sha256() {
        let (token, t) = mint("alice", "acme", 1_000, Some(60));
        assert_eq!(token.len(), 64);
        assert_eq!(t.hash, sha256_hex(&token));
        assert_eq!(t.expires_ms, Some(61_000));
        let kept = serde_json::to_string(&t).unwrap();
        assert!(!kept.contains(&token), "{kept}");
        let shown = t.view(1_000).to_string() + &t.hash_view().to_string();
        assert!(!shown.contains(&token), "{shown}");
        assert!(!t.view(1_000).to_string().contains(&t.hash));
        let (other, _) = mint("alice", "acme", 1_000, None);
        assert_ne!(token, other);
    }

    #[test]
    fn create_requests_are_checked() {
        let body = |user: &str, org: Option<&str>, exp: Option<u64>| CreateBody {
            user_id: user.into(),
            org_id: org.map(str::to_string),
            expires_in_s: exp,
        };
        assert_eq!(check(&body("u", None, None)).unwrap(), DEFAULT_ORG);
        assert_eq!(check(&body("u", Some("acme"), Some(1))).unwrap(), "acme");
        for bad in [
            body("", None, None),
            body(" ", None, None),
            body("a\nb", None, None),
            body(&"u".repeat(MAX_USER + 1), None, None),
            body("u", Some("Acme"), None),
            body("u", None, Some(0)),
            body("u", None, Some(MAX_LIFETIME_S + 1)),
        ] {
            assert!(check(&bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// A token is offered to a node exactly when the simple model says so: its organization,
        /// never revoked, and no expiry or one still ahead.
        #[test]
        fn live_for_matches_the_model(
            org in prop::sample::select(vec!["acme", "beta"]),
            asked in prop::sample::select(vec!["acme", "beta"]),
            created in 0u64..1_000_000,
            life in prop::option::of(1u64..1_000),
            revoked in prop::option::of(0u64..2_000_000),
            now in 0u64..3_000_000,
        ) {
            let (_, mut t) = mint("u", org, created, life);
            t.revoked_ms = revoked;
            let model = org == asked
                && revoked.is_none()
                && life.is_none_or(|l| now < created + l * 1000);
            prop_assert_eq!(t.live_for(asked, now), model);
            prop_assert_eq!(t.state(now) == "active", t.live_for(org, now));
        }
    }
}
