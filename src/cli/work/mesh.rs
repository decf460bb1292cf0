//! The node's mesh in `citadel work`: whether it runs (`mesh.enabled`: on by default once the
//! node is enrolled with a control plane), and the loop that brings it up and keeps it up: the
//! node key (`DATA_DIR/mesh.key`), registration and the map watch, the relay link and the data
//! plane (`citadel_mesh::Mesh`), then the services on the node's mesh address (the terminal and
//! the status server, same ports as on loopback). It prints `citadel: mesh 100.64.x.y (N
//! peers)` each time the mesh comes up. A mesh failure never stops job processing: it is
//! logged, and the loop backs off and tries again. It must never log the node's key or
//! credential. The status server reaches it through [`MeshControl`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use citadel_mesh::{Mesh, MeshError, MeshListener, MeshStream, NetworkMap, PeerKey};
use citadel_transports::control_plane::mesh_wire;
use citadel_transports::Backoff;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::terminal::Plane;
use crate::mesh::coord::Coordinator;
use crate::status::mesh::{MeshControl, MeshFailure, MeshIo};

/// Datagrams queued between the relay link and the data plane, each way.
const QUEUE: usize = 1024;

/// Whether the mesh runs: `--no-mesh` wins, then `--mesh`/`CITADEL_MESH_ENABLED`, then the
/// manifest's `mesh.enabled`, else on exactly when the node is enrolled.
pub(super) fn enabled(
    no_flag: bool,
    flag: Option<bool>,
    file: Option<bool>,
    enrolled: bool,
) -> bool {
    !no_flag && flag.or(file).unwrap_or(enrolled)
}

/// The running mesh: what the status server asks, and the loop to stop.
#[derive(Debug)]
pub(super) struct Running {
    pub node: Arc<MeshNode>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops the loop and shuts the data plane down.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Starts the loop when the mesh is enabled for this node; `None` when it is off.
pub(super) fn start(
    args: &super::WorkArgs,
    file: &crate::config::FileConfig,
    data_dir: &Path,
) -> anyhow::Result<Option<Running>> {
    let enrolled = super::terminal::enrolled_plane(data_dir)?;
    if !enabled(
        args.no_mesh,
        args.mesh,
        file.mesh.enabled,
        enrolled.is_some(),
    ) {
        return Ok(None);
    }
    let plane = enrolled.ok_or_else(|| {
        anyhow::anyhow!(
            "mesh.enabled is on but this node is not enrolled with a control plane \
             (run `citadel init --control-plane URL`, or turn the mesh off with --no-mesh)"
        )
    })?;
    let node = Arc::new(MeshNode::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(keep_up(
        node.clone(),
        plane,
        data_dir.to_path_buf(),
        stop.clone(),
    ));
    Ok(Some(Running { node, stop, task }))
}

/// The mesh as the status server and the services see it.
#[derive(Debug, Default)]
pub(super) struct MeshNode {
    state: Mutex<State>,
    /// The services to serve on the mesh address, by port, whenever the mesh is up.
    services: Mutex<Vec<(u16, crate::serve::Handle)>>,
}

#[derive(Debug)]
enum State {
    Starting(String),
    Up(Up),
}

impl Default for State {
    fn default() -> Self {
        State::Starting("registering with the control plane".into())
    }
}

#[derive(Debug, Clone)]
struct Up {
    mesh: Arc<Mesh>,
    map: watch::Receiver<NetworkMap>,
}

impl MeshNode {
    /// Serves `handle`'s service on `port` of the mesh address, now if the mesh is up, and
    /// each time it comes up again.
    pub fn add_service(&self, port: u16, handle: crate::serve::Handle) {
        if let Some(up) = self.up() {
            listen(&up.mesh, port, &handle);
        }
        self.services.lock().expect("services").push((port, handle));
    }

    fn up(&self) -> Option<Up> {
        match &*self.state.lock().expect("mesh state") {
            State::Up(up) => Some(up.clone()),
            State::Starting(_) => None,
        }
    }

    fn set(&self, state: State) {
        *self.state.lock().expect("mesh state") = state;
    }

    fn mesh(&self) -> Result<Arc<Mesh>, MeshFailure> {
        match &*self.state.lock().expect("mesh state") {
            State::Up(up) => Ok(up.mesh.clone()),
            State::Starting(why) => Err(MeshFailure::Starting(why.clone())),
        }
    }
}

/// One service's listener on the mesh address.
fn listen(mesh: &Mesh, port: u16, handle: &crate::serve::Handle) {
    match mesh.listen(port) {
        Ok(l) => {
            let addr = SocketAddr::from((mesh.mesh_ip(), port));
            handle.serve(Acceptor { inner: l, addr });
            tracing::info!(service = handle.name(), %addr, "serving on the mesh");
        }
        Err(e) => {
            tracing::error!(service = handle.name(), port, error = %e, "cannot serve on the mesh")
        }
    }
}

/// A mesh listener as axum serves it.
#[derive(Debug)]
struct Acceptor {
    inner: MeshListener,
    addr: SocketAddr,
}

impl axum::serve::Listener for Acceptor {
    type Io = MeshStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (MeshStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((s, from)) => return (s, SocketAddr::V4(from)),
                // The service's stop token ends the serving; until then, nothing comes.
                Err(MeshError::Shutdown) => std::future::pending::<()>().await,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting on the mesh");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

/// Brings the mesh up, and up again after the control plane refused it or a link ended, with
/// the one backoff policy, until `stop`.
async fn keep_up(
    node: Arc<MeshNode>,
    plane: Plane,
    data_dir: std::path::PathBuf,
    stop: CancellationToken,
) {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        let why = tokio::select! {
            why = run_once(&node, &plane, &data_dir) => why,
            () = stop.cancelled() => break,
        };
        let delay = retrier.next_delay();
        tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "the mesh is down; retrying");
        node.set(State::Starting(why));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
    // The data plane shuts down when its last handle goes.
    node.set(State::Starting("the worker is stopping".into()));
}

/// One life of the mesh: up until a link ends; returns why it ended.
async fn run_once(node: &MeshNode, plane: &Plane, data_dir: &Path) -> String {
    let key = match crate::mesh::key::load_or_create(data_dir) {
        Ok(k) => k,
        Err(e) => return format!("the node's mesh key: {e:#}"),
    };
    let coord = match Coordinator::new(&plane.url, &plane.credential, key.public()) {
        Ok(c) => c,
        Err(e) => return format!("{e:#}"),
    };
    let mut watching = match coord.start().await {
        Ok(w) => w,
        Err(e) => return e.to_string(),
    };
    let (map_tx, map) = watch::channel(convert_map(&watching.map.borrow()));
    let (relay_in_tx, relay_in_rx) = mpsc::channel(QUEUE);
    let (relay_out_tx, relay_out_rx) = mpsc::channel(QUEUE);
    let (in_tx, in_rx) = mpsc::channel(QUEUE);
    let (out_tx, out_rx) = mpsc::channel(QUEUE);
    let mut relay =
        match crate::mesh::relay::spawn(&plane.url, &plane.credential, relay_in_tx, relay_out_rx) {
            Ok(r) => r,
            Err(e) => return format!("{e:#}"),
        };
    let bridges = [
        tokio::spawn(forward(relay_in_rx, in_tx, PeerKey)),
        tokio::spawn(forward(out_rx, relay_out_tx, |k: PeerKey| k.0)),
        tokio::spawn(follow_map(watching.map.clone(), map_tx)),
    ];
    let mesh = Arc::new(Mesh::start(
        key.secret().clone(),
        map.clone(),
        in_rx,
        out_tx,
    ));
    announce(&mesh, &map);
    node.set(State::Up(Up {
        mesh: mesh.clone(),
        map,
    }));
    for (port, handle) in node.services.lock().expect("services").iter() {
        listen(&mesh, *port, handle);
    }
    let why = tokio::select! {
        end = &mut watching.task => format!("the map watch ended: {}", ended(end)),
        end = &mut relay => format!("the relay link ended: {}", ended(end)),
    };
    for b in bridges {
        b.abort();
    }
    relay.abort();
    watching.task.abort();
    node.set(State::Starting(why.clone()));
    drop(mesh);
    why
}

fn ended<E: std::fmt::Display>(end: Result<Result<(), E>, tokio::task::JoinError>) -> String {
    match end {
        Ok(Ok(())) => "closed".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    }
}

fn announce(mesh: &Mesh, map: &watch::Receiver<NetworkMap>) {
    let peers = map.borrow().peers.len();
    eprintln!("citadel: mesh {} ({peers} peers)", mesh.mesh_ip());
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

fn failure(e: MeshError) -> MeshFailure {
    match e {
        MeshError::UnknownPeer(p) => MeshFailure::UnknownPeer(p),
        e @ MeshError::Timeout { .. } => MeshFailure::Timeout(e.to_string()),
        e => MeshFailure::Failed(e.to_string()),
    }
}

#[async_trait::async_trait]
impl MeshControl for MeshNode {
    fn status(&self) -> Value {
        let up = match &*self.state.lock().expect("mesh state") {
            State::Starting(why) => return json!({"state": "starting", "error": why}),
            State::Up(up) => up.clone(),
        };
        let s = up.mesh.status();
        let map = up.map.borrow().clone();
        let peers: Vec<Value> = s
            .peers
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "mesh_ip": p.mesh_ip,
                    "public_key": p.public_key,
                    "path": p.path,
                    "tx_bytes": p.tx_bytes,
                    "rx_bytes": p.rx_bytes,
                    "last_handshake_ms": p.last_handshake_ago.map(|d| d.as_millis() as u64),
                })
            })
            .collect();
        json!({
            "state": "up",
            "name": map.self_node.name,
            "node_id": map.self_node.node_id,
            "mesh_ip": s.mesh_ip,
            "public_key": s.public_key,
            "map_version": map.version,
            "peers": peers,
        })
    }

    async fn ping(&self, peer: &str, timeout: Duration) -> Result<Duration, MeshFailure> {
        self.mesh()?.ping(peer, timeout).await.map_err(failure)
    }

    async fn connect(&self, peer: &str, port: u16) -> Result<Box<dyn MeshIo>, MeshFailure> {
        let stream = self.mesh()?.dial(peer, port).await.map_err(failure)?;
        Ok(Box::new(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_is_on_when_enrolled_unless_told_otherwise() {
        assert!(enabled(false, None, None, true));
        assert!(!enabled(false, None, None, false));
        assert!(!enabled(false, None, Some(false), true));
        assert!(enabled(false, Some(true), Some(false), true));
        assert!(!enabled(false, Some(false), Some(true), true));
        assert!(!enabled(true, Some(true), Some(true), true));
    }
}
