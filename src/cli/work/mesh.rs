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

use citadel_mesh::{Mesh, MeshError, MeshListener, MeshStream, NetworkMap};
use citadel_transports::Backoff;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::terminal::Plane;
use crate::status::mesh::{MeshControl, MeshFailure, MeshIo};

pub(crate) mod join;

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
    /// What stops the listeners of the mesh that is up now.
    listening: Mutex<Vec<CancellationToken>>,
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
            self.listen(&up.mesh, port, &handle);
        }
        self.services.lock().expect("services").push((port, handle));
    }

    /// One service's listener on the mesh address.
    fn listen(&self, mesh: &Mesh, port: u16, handle: &crate::serve::Handle) {
        match mesh.listen(port) {
            Ok(l) => {
                let addr = SocketAddr::from((mesh.mesh_ip(), port));
                let stop = handle.serve(Acceptor { inner: l, addr });
                self.listening.lock().expect("listening").push(stop);
                tracing::info!(service = handle.name(), %addr, "serving on the mesh");
            }
            Err(e) => {
                tracing::error!(service = handle.name(), port, error = %e, "cannot serve on the mesh")
            }
        }
    }

    /// The mesh is up: serve every service on it.
    fn serve_all(&self, mesh: &Mesh) {
        let services = self.services.lock().expect("services").clone();
        for (port, handle) in &services {
            self.listen(mesh, *port, handle);
        }
    }

    /// The mesh went down: stop its listeners.
    fn stop_listening(&self) {
        for stop in self.listening.lock().expect("listening").drain(..) {
            stop.cancel();
        }
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
        let (why, was_up) = tokio::select! {
            end = run_once(&node, &plane, &data_dir) => end,
            () = stop.cancelled() => break,
        };
        node.stop_listening();
        if was_up {
            retrier.reset();
        }
        let delay = retrier.next_delay();
        tracing::warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "the mesh is down; retrying");
        node.set(State::Starting(why));
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = stop.cancelled() => break,
        }
    }
    // The data plane shuts down when its last handle goes.
    node.stop_listening();
    node.set(State::Starting("the worker is stopping".into()));
}

/// One life of the mesh: up until a link ends; returns why it ended, and whether it was up.
async fn run_once(node: &MeshNode, plane: &Plane, data_dir: &Path) -> (String, bool) {
    let key = match crate::mesh::key::load_or_create(data_dir) {
        Ok(k) => k,
        Err(e) => return (format!("the node's mesh key: {e:#}"), false),
    };
    let mut joined = match join::join(&plane.url, &plane.credential, &key).await {
        Ok(j) => j,
        Err(why) => return (why, false),
    };
    let (mesh, map) = (joined.mesh.clone(), joined.map.clone());
    eprintln!(
        "citadel: mesh {} ({} peers)",
        mesh.mesh_ip(),
        map.borrow().peers.len()
    );
    node.set(State::Up(Up {
        mesh: mesh.clone(),
        map,
    }));
    node.serve_all(&mesh);
    let why = joined.ended().await;
    node.set(State::Starting(why.clone()));
    (why, true)
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
