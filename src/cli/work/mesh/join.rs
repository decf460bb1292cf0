//! Joining the mesh once: register the node's key and follow the map ([`crate::mesh::coord`]),
//! link to the control plane's relay ([`crate::mesh::relay`]) and start the data plane
//! ([`citadel_mesh::Mesh`]) on the channels between them, converting the keys and maps of the
//! wire into the data plane's. `citadel work` keeps a joined mesh up; `citadel bench mesh`
//! joins two. It never retries (its caller does) and never logs a key or a credential.

use std::sync::Arc;

use bytes::Bytes;
use citadel_mesh::{Mesh, NetworkMap, PeerKey};
use citadel_transports::control_plane::mesh_wire;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::mesh::coord::{CoordError, Coordinator};
use crate::mesh::key::NodeKey;

/// Datagrams queued between the relay link and the data plane, each way.
const QUEUE: usize = 1024;

/// A node on the mesh: its data plane and map, and the tasks that feed them (stopped on drop).
#[derive(Debug)]
pub(crate) struct Joined {
    pub mesh: Arc<Mesh>,
    pub map: watch::Receiver<NetworkMap>,
    coord: JoinHandle<Result<(), CoordError>>,
    relay: JoinHandle<Result<(), CoordError>>,
    bridges: Vec<JoinHandle<()>>,
}

impl Joined {
    /// Waits until the map watch or the relay link ends: why it did.
    pub async fn ended(&mut self) -> String {
        tokio::select! {
            end = &mut self.coord => format!("the map watch ended: {}", why(end)),
            end = &mut self.relay => format!("the relay link ended: {}", why(end)),
        }
    }
}

impl Drop for Joined {
    fn drop(&mut self) {
        self.coord.abort();
        self.relay.abort();
        for b in &self.bridges {
            b.abort();
        }
    }
}

fn why(end: Result<Result<(), CoordError>, tokio::task::JoinError>) -> String {
    match end {
        Ok(Ok(())) => "closed".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

/// Registers `key` with the control plane at `url` (the node's `credential`), waits for the
/// first map, links to the relay and starts the data plane; why not, when it cannot.
pub(crate) async fn join(url: &str, credential: &str, key: &NodeKey) -> Result<Joined, String> {
    let coord = Coordinator::new(url, credential, key.public()).map_err(|e| format!("{e:#}"))?;
    let watching = coord.start().await.map_err(|e| e.to_string())?;
    let (map_tx, map) = watch::channel(convert_map(&watching.map.borrow()));
    let (relay_in_tx, relay_in_rx) = mpsc::channel(QUEUE);
    let (relay_out_tx, relay_out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let relay = crate::mesh::relay::spawn(url, credential, relay_in_tx, relay_out_rx)
        .map_err(|e| format!("{e:#}"))?;
    let bridges = vec![
        tokio::spawn(forward(relay_in_rx, in_tx, PeerKey)),
        tokio::spawn(forward(out_rx, relay_out_tx, |k: PeerKey| k.0)),
        tokio::spawn(follow_map(watching.map.clone(), map_tx)),
    ];
    let mesh = Mesh::start(key.secret().clone(), map.clone(), in_rx, out_tx);
    Ok(Joined {
        mesh: Arc::new(mesh),
        map,
        coord: watching.task,
        relay,
        bridges,
    })
}

/// Moves datagrams between the relay's channels and the data plane's, converting the key.
async fn forward<A, B>(
    mut from: mpsc::Receiver<(A, Bytes)>,
    to: mpsc::Sender<(B, Bytes)>,
    key: impl Fn(A) -> B,
) {
    while let Some((k, d)) = from.recv().await {
        if to.send((key(k), d)).await.is_err() {
            return;
        }
    }
}

/// The control plane's maps as the data plane reads them.
async fn follow_map(
    mut from: watch::Receiver<mesh_wire::NetworkMap>,
    to: watch::Sender<NetworkMap>,
) {
    while from.changed().await.is_ok() {
        let map = convert_map(&from.borrow_and_update());
        if to.send(map).is_err() {
            return;
        }
    }
}

fn convert_node(n: &mesh_wire::MapNode) -> citadel_mesh::MapNode {
    citadel_mesh::MapNode {
        node_id: n.node_id.clone(),
        name: n.name.clone(),
        public_key: PeerKey(n.public_key.0),
        mesh_ip: n.mesh_ip,
    }
}

fn convert_map(m: &mesh_wire::NetworkMap) -> NetworkMap {
    NetworkMap {
        version: m.version,
        self_node: convert_node(&m.me),
        peers: m.peers.iter().map(convert_node).collect(),
    }
}
