//! What the control plane's person tokens share (terminal tokens, console tokens): a record kept
//! in a sled tree by id with only the token's SHA-256, its state (`active`, `revoked`,
//! `expired`), the lifetime bound, revocation that keeps the first time, and the admin check of
//! their admin API. The caller makes a change durable with the store's flush before it answers.
//! It must never keep, log or list a plain token.

use std::marker::PhantomData;

use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{principal, REVOKED};
use crate::auth::{authorize, Need, Principal};
use crate::common::{ApiError, ApiResult, AppState};
use crate::store::{Store, StoreError};

/// The longest a token may live (ten years): a bound, so no expiry overflows.
pub const MAX_LIFETIME_S: u64 = 10 * 366 * 24 * 3600;

/// A token record kept by id.
pub(crate) trait Kept: Serialize + DeserializeOwned {
    /// What it is, for logs ("terminal token").
    const WHAT: &'static str;
    fn id(&self) -> &str;
    /// Unix milliseconds.
    fn created_ms(&self) -> u64;
    fn expires_ms(&self) -> Option<u64>;
    fn revoked_ms(&self) -> Option<u64>;
    fn set_revoked(&mut self, now_ms: u64);

    /// `active`, `revoked` or `expired` at `now_ms`.
    fn state(&self, now_ms: u64) -> &'static str {
        match (self.revoked_ms(), self.expires_ms()) {
            (Some(_), _) => "revoked",
            (None, Some(e)) if now_ms >= e => "expired",
            _ => "active",
        }
    }
}

/// Implements [`Kept`] for a record with the fields `id`, `created_ms`, `expires_ms` and
/// `revoked_ms`; `$what` names it in logs.
macro_rules! kept {
    ($record:ty, $what:literal) => {
        impl $crate::kept_tokens::Kept for $record {
            const WHAT: &'static str = $what;
            fn id(&self) -> &str {
                &self.id
            }
            fn created_ms(&self) -> u64 {
                self.created_ms
            }
            fn expires_ms(&self) -> Option<u64> {
                self.expires_ms
            }
            fn revoked_ms(&self) -> Option<u64> {
                self.revoked_ms
            }
            fn set_revoked(&mut self, now_ms: u64) {
                self.revoked_ms = Some(now_ms);
            }
        }
    };
}
pub(crate) use kept;

/// The expiry of a token created at `now_ms` that lives `lifetime_s` (none: until revoked).
pub fn expiry(now_ms: u64, lifetime_s: Option<u64>) -> Option<u64> {
    lifetime_s.map(|s| now_ms.saturating_add(s.saturating_mul(1000)))
}

/// Checks a requested lifetime: 1 s to [`MAX_LIFETIME_S`], or none.
pub fn check_lifetime(lifetime_s: Option<u64>) -> Result<(), String> {
    match lifetime_s {
        Some(s) if s == 0 || s > MAX_LIFETIME_S => Err(format!(
            "`expires_in_s` must be 1 to {MAX_LIFETIME_S} seconds (or absent: until revoked)"
        )),
        _ => Ok(()),
    }
}

/// The records of one kind, in a tree of the store (by id).
#[derive(Debug)]
pub(crate) struct KeptTokens<T> {
    tree: sled::Tree,
    /// Held across a revocation's read and write, so concurrent revocations keep the first time.
    revoking: std::sync::Mutex<()>,
    kind: PhantomData<fn() -> T>,
}

pub(crate) fn storage(e: impl std::fmt::Display) -> ApiError {
    ApiError::from(StoreError::Storage(std::io::Error::other(e.to_string())))
}

impl<T: Kept> KeptTokens<T> {
    pub fn open(store: &Store, tree: &str) -> Result<Self, StoreError> {
        Ok(Self {
            tree: store.tree(tree)?,
            revoking: std::sync::Mutex::new(()),
            kind: PhantomData,
        })
    }

    /// Writes `t` and notes the write for the store's next flush.
    pub fn put(&self, store: &Store, t: &T) -> ApiResult<()> {
        let bytes = serde_json::to_vec(t).map_err(storage)?;
        self.tree
            .insert(t.id().as_bytes(), bytes)
            .map_err(storage)?;
        store.wrote();
        Ok(())
    }

    pub fn get(&self, id: &str) -> ApiResult<Option<T>> {
        let Some(v) = self.tree.get(id.as_bytes()).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(&v).map(Some).map_err(storage)
    }

    /// Every record kept, oldest first.
    pub fn all(&self) -> ApiResult<Vec<T>> {
        let mut out = Vec::new();
        for kv in self.tree.iter() {
            let (_, v) = kv.map_err(storage)?;
            match serde_json::from_slice::<T>(&v) {
                Ok(t) => out.push(t),
                Err(e) => {
                    tracing::error!(error = %e, what = T::WHAT, "skipping an unreadable token")
                }
            }
        }
        out.sort_by(|a, b| (a.created_ms(), a.id()).cmp(&(b.created_ms(), b.id())));
        Ok(out)
    }

    /// Revokes `id` at `now_ms` (revoking twice keeps the first time); `None` when unknown.
    pub fn revoke(&self, store: &Store, id: &str, now_ms: u64) -> ApiResult<Option<T>> {
        let _one = self
            .revoking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(mut t) = self.get(id)? else {
            return Ok(None);
        };
        if t.revoked_ms().is_none() {
            t.set_revoked(now_ms);
            self.put(store, &t)?;
        }
        Ok(Some(t))
    }
}

/// The caller of a request, or 401.
pub(crate) fn caller(app: &AppState, headers: &HeaderMap) -> ApiResult<Principal> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| principal(app, t.trim()))
        .ok_or_else(|| ApiError(StatusCode::UNAUTHORIZED, REVOKED.into()))
}

/// The admin token, or 401/403.
pub(crate) fn admin(app: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let who = caller(app, headers)?;
    authorize(&who, Need::Admin).map_err(|d| {
        tracing::info!(
            node_id = who.node_id(),
            "a node credential was refused a token admin API"
        );
        ApiError(StatusCode::FORBIDDEN, d.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_are_bounded() {
        assert!(check_lifetime(None).is_ok());
        assert!(check_lifetime(Some(1)).is_ok());
        assert!(check_lifetime(Some(MAX_LIFETIME_S)).is_ok());
        assert!(check_lifetime(Some(0)).is_err());
        assert!(check_lifetime(Some(MAX_LIFETIME_S + 1)).is_err());
        assert_eq!(expiry(1_000, Some(60)), Some(61_000));
        assert_eq!(expiry(1_000, None), None);
    }
}
