//! Per-node credentials (docs/control-plane.md#credentials-and-organizations): device
//! authorization issues each approved node its own secret, shown once to the node; only its
//! SHA-256 is kept, in the store's `credentials` tree, with the node's organization and whether it
//! was revoked. A token reads `cn1.NODE_ID.SECRET`; it is checked by the node id, then by a
//! constant-time comparison of the secret's hash. This module owns issuing, checking, listing and
//! revoking them; it must never keep, log or return a secret other than the one it just issued.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;

use super::auth::Principal;

/// What every node token starts with (the admin token is 64 hex digits, never this).
const PREFIX: &str = "cn1";

/// A node and its credential, as kept and as `GET /api/v1/credentials` lists it (never the
/// secret, never its hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCredential {
    pub node_id: String,
    pub name: String,
    /// The one organization it works for.
    pub org: String,
    /// Unix milliseconds.
    pub issued_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
    /// SHA-256 of the secret, hex.
    #[serde(rename = "secret_sha256", skip_serializing)]
    hash: String,
}

impl NodeCredential {
    pub fn is_revoked(&self) -> bool {
        self.revoked_ms.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("no node `{0}` was ever approved on this control plane")]
    Unknown(String),
    #[error("storage error: {0} (retrying can help once the disk has room)")]
    Storage(#[source] std::io::Error),
}

fn storage(e: sled::Error) -> CredentialError {
    CredentialError::Storage(e.into())
}

pub(crate) fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Constant-time comparison, so a secret cannot be guessed byte by byte from timings.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A fresh credential for a node: the token to give it once, and the record to keep.
pub fn mint(node_id: &str, name: &str, org: &str, now_ms: u64) -> (String, NodeCredential) {
    let secret = super::store::new_secret();
    let token = format!("{PREFIX}.{node_id}.{secret}");
    let record = NodeCredential {
        node_id: node_id.to_string(),
        name: name.to_string(),
        org: org.to_string(),
        issued_ms: now_ms,
        revoked_ms: None,
        hash: sha256_hex(&secret),
    };
    (token, record)
}

/// The node id and secret of a node token, if it has the shape of one.
pub fn split(token: &str) -> Option<(&str, &str)> {
    let mut parts = token.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(PREFIX), Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => {
            Some((id, secret))
        }
        _ => None,
    }
}

/// Whether `token` is the live credential `record` was minted with.
pub fn verify(record: &NodeCredential, token: &str) -> bool {
    match split(token) {
        Some((id, secret)) => {
            id == record.node_id
                && !record.is_revoked()
                && same(sha256_hex(secret).as_bytes(), record.hash.as_bytes())
        }
        None => false,
    }
}

/// The credentials of one control plane: in memory for the check on every request, in sled for
/// restarts. The caller makes a change durable with the store's flush before it answers.
#[derive(Debug)]
pub struct Credentials {
    tree: sled::Tree,
    mem: RwLock<HashMap<String, NodeCredential>>,
    /// Bumped on every revocation, so open WebSocket sessions check their node at once.
    revoked: watch::Sender<u64>,
}

impl Credentials {
    /// Loads the credentials kept in `tree`.
    pub(crate) fn open(tree: sled::Tree) -> Result<Self, CredentialError> {
        let mut mem = HashMap::new();
        for kv in tree.iter() {
            let (_, v) = kv.map_err(storage)?;
            match serde_json::from_slice::<NodeCredential>(&v) {
                Ok(c) => {
                    mem.insert(c.node_id.clone(), c);
                }
                Err(e) => tracing::error!(error = %e, "skipping an unreadable node credential"),
            }
        }
        Ok(Self {
            tree,
            mem: RwLock::new(mem),
            revoked: watch::channel(0).0,
        })
    }

    fn put(&self, c: &NodeCredential) -> Result<(), CredentialError> {
        #[derive(Serialize)]
        struct Stored<'a> {
            #[serde(flatten)]
            c: &'a NodeCredential,
            secret_sha256: &'a str,
        }
        let bytes = serde_json::to_vec(&Stored {
            c,
            secret_sha256: &c.hash,
        })
        .map_err(|e| CredentialError::Storage(std::io::Error::other(e)))?;
        self.tree
            .insert(c.node_id.as_bytes(), bytes)
            .map_err(storage)?;
        Ok(())
    }

    /// Issues a node its credential (replacing any earlier one of the same node, which stops
    /// working at once); returns the token, to be shown once.
    pub fn issue(
        &self,
        node_id: &str,
        name: &str,
        org: &str,
        now_ms: u64,
    ) -> Result<String, CredentialError> {
        let (token, record) = mint(node_id, name, org, now_ms);
        self.put(&record)?;
        let mut mem = self.mem.write().unwrap_or_else(PoisonError::into_inner);
        mem.insert(node_id.to_string(), record);
        Ok(token)
    }

    /// The principal a node token stands for; `None` for an unknown, wrong or revoked one.
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        let (id, _) = split(token)?;
        let mem = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        let c = mem.get(id)?;
        verify(c, token).then(|| Principal::node(&c.node_id, &c.org))
    }

    /// Whether the node's credential is still live.
    pub fn is_live(&self, node_id: &str) -> bool {
        let mem = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        mem.get(node_id).is_some_and(|c| !c.is_revoked())
    }

    /// Revokes a node's credential: its next request is refused. Revoking twice keeps the first
    /// time.
    pub fn revoke(&self, node_id: &str, now_ms: u64) -> Result<NodeCredential, CredentialError> {
        let mut mem = self.mem.write().unwrap_or_else(PoisonError::into_inner);
        let c = mem
            .get_mut(node_id)
            .ok_or_else(|| CredentialError::Unknown(node_id.to_string()))?;
        if c.revoked_ms.is_none() {
            c.revoked_ms = Some(now_ms);
        }
        let c = c.clone();
        self.put(&c)?;
        drop(mem);
        self.revoked.send_modify(|n| *n += 1);
        Ok(c)
    }

    /// Every node ever approved, by node id.
    pub fn list(&self) -> Vec<NodeCredential> {
        let mem = self.mem.read().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<NodeCredential> = mem.values().cloned().collect();
        all.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        all
    }

    pub fn subscribe_revocations(&self) -> watch::Receiver<u64> {
        self.revoked.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn open(dir: &std::path::Path) -> Credentials {
        let db = crate::store::open_db(dir).unwrap();
        Credentials::open(db.open_tree("credentials").unwrap()).unwrap()
    }

    #[test]
    fn a_token_works_until_revoked_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let token;
        {
            let creds = open(dir.path());
            token = creds.issue("node-a", "a", "acme", 1).unwrap();
            assert_eq!(
                creds.authenticate(&token),
                Some(Principal::node("node-a", "acme"))
            );
            let secret = split(&token).unwrap().1;
            assert_eq!(secret.len(), 64);
            let kept = creds.tree.get("node-a").unwrap().unwrap();
            let kept = String::from_utf8_lossy(&kept).into_owned();
            assert!(
                !kept.contains(secret) && kept.contains(&sha256_hex(secret)),
                "{kept}"
            );
            let listed = serde_json::to_string(&creds.list()).unwrap();
            assert!(
                !listed.contains("sha256") && !listed.contains(secret),
                "{listed}"
            );
        }
        let creds = open(dir.path());
        assert!(creds.authenticate(&token).is_some(), "survives a restart");
        let seen = creds.subscribe_revocations();
        assert!(creds.revoke("node-a", 5).unwrap().is_revoked());
        assert!(seen.has_changed().unwrap());
        assert_eq!(creds.authenticate(&token), None);
        assert!(!creds.is_live("node-a"));
        assert_eq!(creds.revoke("node-a", 9).unwrap().revoked_ms, Some(5));
        assert!(matches!(
            creds.revoke("nobody", 1),
            Err(CredentialError::Unknown(_))
        ));
        // Approving the node again gives it a new credential; the old one stays dead.
        let again = creds.issue("node-a", "a", "acme", 10).unwrap();
        assert!(creds.authenticate(&again).is_some());
        assert_eq!(creds.authenticate(&token), None);
    }

    proptest! {
        /// Any token other than the one minted (another node's id, a changed secret, the admin
        /// token's shape) is refused.
        #[test]
        fn only_the_minted_token_verifies(other in "[a-z0-9.]{0,80}", flip in 0usize..64) {
            let (token, record) = mint("node-a", "a", "o", 0);
            prop_assert!(verify(&record, &token));
            prop_assert!(other == token || !verify(&record, &other));
            let (id, secret) = split(&token).unwrap();
            let mut s: Vec<u8> = secret.bytes().collect();
            s[flip] = if s[flip] == b'0' { b'1' } else { b'0' };
            let forged = format!("{PREFIX}.{id}.{}", String::from_utf8(s).unwrap());
            prop_assert!(!verify(&record, &forged));
            let other_node = format!("{PREFIX}.node-b.{secret}");
            prop_assert!(!verify(&record, &other_node));
            prop_assert!(!verify(&record, secret));
        }
    }
}
