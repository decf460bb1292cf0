//! The control plane as a member of each organization's mesh (docs/mesh.md#the-control-plane-as-a-member):
//! one x25519 key per organization in `NEXUS_DIR/mesh/ORG.key` (mode 0600), registered in the
//! [`Registry`](super::map::Registry) like a node's (node id `nexus:ORG`, name `nexus`), so it
//! gets a stable address from the organization's block and appears in that organization's map
//! only. Its data plane ([`citadel_mesh::Mesh`]) is linked to the relay in-process: what it sends
//! goes through the relay's own routing (counted like any node's frame), and the hub hands it
//! what nodes send to its key. An organization's member starts on the first console terminal
//! opened on one of its nodes, and runs until the plane stops. This module owns the members; it
//! must never log or
//! show a member's private key, and never let one organization's member reach another's nodes.

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use citadel_mesh::{Mesh, NetworkMap, PeerKey};
use citadel_transports::control_plane::mesh_wire::{self, encode_frame, split_frame, MeshKey};
use tokio::sync::{mpsc, watch};
use x25519_dalek::{PublicKey, StaticSecret};

use super::metrics::count;
use super::relay::{route, QUEUE};
use super::MeshState;
use crate::store::now_ms;

/// How long a member that has just joined waits before its first dial, for the nodes' maps.
pub const SETTLE: std::time::Duration = std::time::Duration::from_millis(300);

/// The node id of the plane's member of `org` (no node id has a colon).
pub fn member_id(org: &str) -> String {
    format!("nexus:{org}")
}

/// Whether a registered node id is one of the plane's own members.
pub fn is_member(node_id: &str) -> bool {
    node_id.starts_with("nexus:")
}

/// The plane's member of one organization: its data plane and map.
#[derive(Debug)]
pub struct Member {
    pub org: String,
    pub mesh: Mesh,
    pub map: watch::Receiver<NetworkMap>,
}

impl Member {
    /// The mesh address of node `node_id` in this member's map (its organization's live nodes).
    pub fn address_of(&self, node_id: &str) -> Option<std::net::Ipv4Addr> {
        let map = self.map.borrow();
        map.peers
            .iter()
            .find(|p| p.node_id == node_id)
            .map(|p| p.mesh_ip)
    }
}

/// The running members, by organization.
#[derive(Debug)]
pub(crate) struct Members {
    dir: PathBuf,
    running: Mutex<HashMap<String, Arc<Member>>>,
}

impl Members {
    /// Members keeping their keys in `dir` (created mode 0700 on first use).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            running: Mutex::new(HashMap::new()),
        }
    }
}

/// The member of `org`, started (registered, linked, its map followed) if it is not running,
/// and whether it was started now; the registration is written to the store, not flushed (the
/// caller's flush covers it).
pub(crate) fn ensure(s: &Arc<MeshState>, org: &str) -> Result<(Arc<Member>, bool), String> {
    let mut running = (s.members.running.lock()).unwrap_or_else(PoisonError::into_inner);
    if let Some(m) = running.get(org) {
        return Ok((m.clone(), false));
    }
    let secret = load_or_create(&s.members.dir, org).map_err(|e| e.to_string())?;
    let key = MeshKey(PublicKey::from(&secret).to_bytes());
    let id = member_id(org);
    let ip = (s.registry.register(&id, org, "nexus", key, now_ms())).map_err(|e| e.to_string())?;
    s.app.store.wrote();
    let first = s.registry.map_for(&id, org).ok_or("the member's map")?;
    let (map_tx, map) = watch::channel(convert(&first));
    let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    s.hub.attach(&id, org, frames_tx);
    tokio::spawn(deliver(frames_rx, in_tx));
    tokio::spawn(send(Arc::downgrade(s), id.clone(), org.to_string(), out_rx));
    tokio::spawn(follow(Arc::downgrade(s), id, org.to_string(), map_tx));
    let mesh = Mesh::start(secret, map.clone(), in_rx, out_tx);
    tracing::info!(%org, mesh_ip = %ip, public_key = %key, "the control plane joined the organization's mesh");
    let member = Arc::new(Member {
        org: org.to_string(),
        mesh,
        map,
    });
    running.insert(org.to_string(), member.clone());
    Ok((member, true))
}

/// Frames the hub queued for the member (`[source key | datagram]`) into its data plane.
async fn deliver(mut frames: mpsc::Receiver<Bytes>, to: mpsc::Sender<(PeerKey, Bytes)>) {
    while let Some(frame) = frames.recv().await {
        let Some((src, _)) = split_frame(&frame) else {
            continue;
        };
        // A full data plane drops the datagram, as a network would.
        let _ = to.try_send((PeerKey(src), frame.slice(src.len()..)));
    }
}

/// The member's datagrams through the relay's routing, as a node's frames go.
async fn send(
    s: Weak<MeshState>,
    id: String,
    org: String,
    mut out: mpsc::Receiver<(PeerKey, Bytes)>,
) {
    while let Some((key, datagram)) = out.recv().await {
        let Some(s) = s.upgrade() else { return };
        count(route(&s, &id, &org, &encode_frame(&key.0, &datagram)));
    }
}

/// Follows the registry: the member's map whenever its organization's changes.
async fn follow(s: Weak<MeshState>, id: String, org: String, to: watch::Sender<NetworkMap>) {
    let (mut changed, mut revoked) = match s.upgrade() {
        Some(s) => (
            s.registry.subscribe(),
            s.app.credentials.subscribe_revocations(),
        ),
        None => return,
    };
    loop {
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = revoked.changed() => if r.is_err() { return },
        }
        let Some(s) = s.upgrade() else { return };
        super::reconcile(&s);
        let Some(map) = s.registry.map_for(&id, &org) else {
            return;
        };
        if map.version != to.borrow().version && to.send(convert(&map)).is_err() {
            return;
        }
    }
}

/// The registry's map as the data plane reads it.
fn convert(m: &mesh_wire::NetworkMap) -> NetworkMap {
    let node = |n: &mesh_wire::MapNode| citadel_mesh::MapNode {
        node_id: n.node_id.clone(),
        name: n.name.clone(),
        public_key: PeerKey(n.public_key.0),
        mesh_ip: n.mesh_ip,
    };
    NetworkMap {
        version: m.version,
        self_node: node(&m.me),
        peers: m.peers.iter().map(node).collect(),
    }
}

/// The member key of `org` in `dir` (`ORG.key`, base64), created with mode 0600 when missing.
fn load_or_create(dir: &Path, org: &str) -> std::io::Result<StaticSecret> {
    let file = dir.join(format!("{org}.key"));
    let bad = || std::io::Error::other(format!("{} does not hold a mesh key", file.display()));
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let bytes: [u8; 32] = (STANDARD.decode(text.trim()).ok())
                .and_then(|b| b.try_into().ok())
                .ok_or_else(bad)?;
            return Ok(StaticSecret::from(bytes));
        }
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)?;
    writeln!(f, "{}", STANDARD.encode(bytes))?;
    f.sync_all()?;
    Ok(StaticSecret::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_key_is_private_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("mesh");
        let a = load_or_create(&keys, "acme").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&keys.join("acme.key")), 0o600);
        assert_eq!(mode(&keys), 0o700);
        let again = load_or_create(&keys, "acme").unwrap();
        assert_eq!(a.to_bytes(), again.to_bytes());
        let b = load_or_create(&keys, "beta").unwrap();
        assert_ne!(a.to_bytes(), b.to_bytes());
        assert!(is_member(&member_id("acme")) && !is_member("node-gpu-1-01234567"));
    }
}
