//! The mesh registry (docs/mesh.md#coordination): which public key each node registered, the
//! address of every (organization, key), and each organization's map version. Kept in two
//! trees of the control plane's store (`mesh_keys`: key → owner and address; `mesh_nodes`: node
//! → its current key) and in memory for the map and the relay. A key belongs to the first node
//! that registered it, for good. The caller makes a registration durable with the store's flush
//! before it answers. It owns those records and the versions; it must never show one
//! organization's nodes to another, and never hold a private key.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use citadel_transports::control_plane::mesh_wire::{MapNode, MeshKey, NetworkMap, KEY_LEN};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::ipam::Ipam;

type Key = [u8; KEY_LEN];

/// Who holds a key, and the address it got (the `mesh_keys` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct KeyRecord {
    pub node_id: String,
    pub org: String,
    pub mesh_ip: Ipv4Addr,
    pub registered_ms: u64,
}

/// A node's current key (the `mesh_nodes` tree).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeEntry {
    pub org: String,
    pub name: String,
    pub public_key: MeshKey,
    pub mesh_ip: Ipv4Addr,
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RegisterError {
    #[error("this public key is already registered to another node; each node needs its own key")]
    KeyTaken,
    #[error("organization {0} has no free mesh address left")]
    Full(String),
    #[error("storage error: {0}")]
    Storage(String),
}

#[derive(Debug, Default)]
struct Inner {
    ipam: Ipam,
    keys: HashMap<Key, KeyRecord>,
    nodes: HashMap<String, NodeEntry>,
    versions: HashMap<String, u64>,
    /// Registered nodes last seen without a live credential (out of the maps).
    dead: HashSet<String>,
}

/// The registry of one control plane.
#[derive(Debug)]
pub(crate) struct Registry {
    keys_tree: sled::Tree,
    nodes_tree: sled::Tree,
    /// What every organization's version starts from (this start's clock, so versions keep
    /// growing across restarts).
    boot: u64,
    inner: Mutex<Inner>,
    /// Bumped whenever a version changes, to wake the long-polls.
    changed: watch::Sender<u64>,
}

fn storage(e: impl std::fmt::Display) -> RegisterError {
    RegisterError::Storage(e.to_string())
}

fn load<T: serde::de::DeserializeOwned>(tree: &sled::Tree) -> Result<Vec<(Vec<u8>, T)>, String> {
    let mut out = Vec::new();
    for kv in tree.iter() {
        let (k, v) = kv.map_err(|e| e.to_string())?;
        match serde_json::from_slice(&v) {
            Ok(t) => out.push((k.to_vec(), t)),
            Err(e) => tracing::error!(error = %e, "skipping an unreadable mesh record"),
        }
    }
    Ok(out)
}

impl Registry {
    /// Loads what `keys_tree` and `nodes_tree` keep; versions start at `now_ms`.
    pub fn open(
        keys_tree: sled::Tree,
        nodes_tree: sled::Tree,
        now_ms: u64,
    ) -> Result<Self, String> {
        let mut inner = Inner::default();
        for (k, rec) in load::<KeyRecord>(&keys_tree)? {
            let Ok(key) = Key::try_from(k.as_slice()) else {
                continue;
            };
            if let Err(e) = inner.ipam.restore(&rec.org, &key, rec.mesh_ip) {
                tracing::error!(error = %e, node_id = %rec.node_id, "skipping a mesh address");
                continue;
            }
            inner.keys.insert(key, rec);
        }
        for (k, n) in load::<NodeEntry>(&nodes_tree)? {
            inner
                .nodes
                .insert(String::from_utf8_lossy(&k).into_owned(), n);
        }
        Ok(Self {
            keys_tree,
            nodes_tree,
            boot: now_ms,
            inner: Mutex::new(inner),
            changed: watch::channel(0).0,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes on every version change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self, inner: &mut Inner, org: &str) {
        let v = inner.versions.entry(org.to_string()).or_insert(self.boot);
        *v += 1;
        self.changed.send_modify(|n| *n += 1);
    }

    /// Registers `key` as the current key of node `node_id` of `org` (named `name`): its address,
    /// written to the trees (not yet flushed). The same node registering again is answered the
    /// same; a new key replaces the node's current one; another node's key is refused.
    pub fn register(
        &self,
        node_id: &str,
        org: &str,
        name: &str,
        key: MeshKey,
        now_ms: u64,
    ) -> Result<Ipv4Addr, RegisterError> {
        let mut inner = self.lock();
        let ip = match inner.keys.get(&key.0) {
            Some(rec) if rec.node_id != node_id || rec.org != org => {
                return Err(RegisterError::KeyTaken)
            }
            Some(rec) => rec.mesh_ip,
            None => {
                let ip = inner
                    .ipam
                    .choose(org, &key.0)
                    .ok_or_else(|| RegisterError::Full(org.to_string()))?;
                let rec = KeyRecord {
                    node_id: node_id.to_string(),
                    org: org.to_string(),
                    mesh_ip: ip,
                    registered_ms: now_ms,
                };
                let bytes = serde_json::to_vec(&rec).map_err(storage)?;
                self.keys_tree.insert(key.0, bytes).map_err(storage)?;
                inner.ipam.restore(org, &key.0, ip).map_err(storage)?;
                inner.keys.insert(key.0, rec);
                ip
            }
        };
        let entry = NodeEntry {
            org: org.to_string(),
            name: name.to_string(),
            public_key: key,
            mesh_ip: ip,
        };
        let bytes = serde_json::to_vec(&entry).map_err(storage)?;
        self.nodes_tree
            .insert(node_id.as_bytes(), bytes)
            .map_err(storage)?;
        inner.nodes.insert(node_id.to_string(), entry);
        inner.dead.remove(node_id);
        self.bump(&mut inner, org);
        Ok(ip)
    }

    /// Takes revocations and re-approvals into the maps. `live(node, org)` says whether the
    /// node holds a live credential of that organization (a node approved again into another
    /// organization no longer does); a registered node whose answer changed since the last look
    /// bumps its organization's version.
    pub fn reconcile(&self, live: impl Fn(&str, &str) -> bool) {
        let mut inner = self.lock();
        let flipped: Vec<(String, String)> = inner
            .nodes
            .iter()
            .filter(|(id, n)| live(id, &n.org) == inner.dead.contains(*id))
            .map(|(id, n)| (id.clone(), n.org.clone()))
            .collect();
        for (id, org) in flipped {
            if !inner.dead.remove(&id) {
                inner.dead.insert(id);
            }
            self.bump(&mut inner, &org);
        }
    }

    /// The map of node `node_id` of `org`: itself and its organization's other live registered
    /// nodes, by node id. `None` when it has no key registered in that organization.
    pub fn map_for(&self, node_id: &str, org: &str) -> Option<NetworkMap> {
        let inner = self.lock();
        let show = |id: &str, n: &NodeEntry| MapNode {
            node_id: id.to_string(),
            name: n.name.clone(),
            public_key: n.public_key,
            mesh_ip: n.mesh_ip,
        };
        let me = inner.nodes.get(node_id).filter(|n| n.org == org)?;
        let mut peers: Vec<MapNode> = inner
            .nodes
            .iter()
            .filter(|(id, n)| n.org == org && *id != node_id && !inner.dead.contains(*id))
            .map(|(id, n)| show(id, n))
            .collect();
        peers.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Some(NetworkMap {
            version: inner.versions.get(org).copied().unwrap_or(self.boot),
            me: show(node_id, me),
            peers,
        })
    }

    /// The current key of a node.
    pub fn key_of(&self, node_id: &str) -> Option<MeshKey> {
        self.lock().nodes.get(node_id).map(|n| n.public_key)
    }

    /// The node whose current key is `key`, with its organization.
    pub fn holder(&self, key: &Key) -> Option<(String, String)> {
        let inner = self.lock();
        let rec = inner.keys.get(key)?;
        let current = inner
            .nodes
            .get(&rec.node_id)
            .is_some_and(|n| n.public_key.0 == *key);
        Some((rec.node_id.clone(), rec.org.clone())).filter(|_| current)
    }

    /// The organization a key was registered in (current or not).
    pub fn org_of(&self, key: &Key) -> Option<String> {
        self.lock().keys.get(key).map(|r| r.org.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &std::path::Path, now: u64) -> Registry {
        let db = crate::store::open_db(dir).unwrap();
        Registry::open(
            db.open_tree("mesh_keys").unwrap(),
            db.open_tree("mesh_nodes").unwrap(),
            now,
        )
        .unwrap()
    }

    #[test]
    fn maps_are_per_organization_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, k2, k3) = (MeshKey([1; 32]), MeshKey([2; 32]), MeshKey([3; 32]));
        let ip1;
        {
            let r = open(dir.path(), 1_000);
            ip1 = r.register("a1", "acme", "one", k1, 5).unwrap();
            r.register("a2", "acme", "two", k2, 5).unwrap();
            r.register("b1", "beta", "three", k3, 5).unwrap();
            let m = r.map_for("a1", "acme").unwrap();
            assert_eq!(m.me.mesh_ip, ip1);
            assert_eq!(m.version, 1_002);
            let peers: Vec<&str> = m.peers.iter().map(|p| p.node_id.as_str()).collect();
            assert_eq!(peers, ["a2"]);
            assert!(r.map_for("b1", "beta").unwrap().peers.is_empty());
            assert!(r.map_for("a1", "beta").is_none());
            // Another node, in the same or another organization, cannot take a key.
            assert!(matches!(
                r.register("a2", "acme", "two", k1, 6),
                Err(RegisterError::KeyTaken)
            ));
            assert!(matches!(
                r.register("b1", "beta", "x", k1, 6),
                Err(RegisterError::KeyTaken)
            ));
        }
        let r = open(dir.path(), 2_000);
        assert_eq!(r.register("a1", "acme", "one", k1, 9).unwrap(), ip1);
        assert_eq!(r.map_for("a1", "acme").unwrap().version, 2_001);
        assert_eq!(r.holder(&k2.0), Some(("a2".into(), "acme".into())));
        // A revoked node leaves its organization's map, and the version moves.
        r.reconcile(|n, _| n != "a2");
        let m = r.map_for("a1", "acme").unwrap();
        assert!(m.peers.is_empty() && m.version == 2_002, "{m:?}");
        r.reconcile(|n, org| n != "a2" && org == "acme");
        assert_eq!(r.map_for("a1", "acme").unwrap().version, 2_002);
        // A new key replaces the node's current one; the old one is no longer held.
        let k4 = MeshKey([4; 32]);
        r.register("a1", "acme", "one", k4, 10).unwrap();
        assert_eq!(r.holder(&k1.0), None);
        assert_eq!(r.org_of(&k1.0).as_deref(), Some("acme"));
        assert_eq!(r.key_of("a1"), Some(k4));
    }
}
