//! The async mesh: `Mesh::start` runs one tokio task that drives the connection core and the
//! smoltcp stack between the relay channels; `listen`, `dial`, `ping`, `status` and `shutdown` are
//! its API. The task is the only place that polls the interface or touches the channels; callers
//! only lock the shared state briefly and wake the task.

use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use x25519_dalek::StaticSecret;

use crate::core::{Core, Event};
use crate::error::MeshError;
use crate::map::{NetworkMap, PeerKey};
use crate::stack::Stack;
use crate::stream::{MeshListener, MeshStream};

/// How long `dial` waits for the connection by default.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the core's timers run.
const TICK: Duration = Duration::from_millis(250);

/// Everything the task and the API share, under one lock.
pub(crate) struct State {
    pub core: Core,
    pub stack: Stack,
    pub map: NetworkMap,
    pub orphans: Vec<SocketHandle>,
    pub closed: bool,
    pub pings: Vec<(u16, Instant, Option<tokio::sync::oneshot::Sender<Duration>>)>,
    next_seq: u16,
    last_tick: Instant,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    pub wake: Notify,
    /// Datagrams dropped because the relay channel stayed full.
    pub dropped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("core", &self.core)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state, unless the mesh is shut down.
    fn open(&self) -> Result<MutexGuard<'_, State>, MeshError> {
        let st = self.lock();
        if st.closed {
            return Err(MeshError::Shutdown);
        }
        Ok(st)
    }
}

/// One peer's line of `Mesh::status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub name: String,
    pub public_key: PeerKey,
    pub mesh_ip: Ipv4Addr,
    /// How datagrams reach the peer: "relay" in this version.
    pub path: &'static str,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    /// How long ago the last handshake completed.
    pub last_handshake_ago: Option<Duration>,
}

/// `Mesh::status`: the node's address and its peers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MeshStatus {
    pub mesh_ip: Ipv4Addr,
    pub public_key: PeerKey,
    pub peers: Vec<PeerStatus>,
    /// Datagrams dropped because the relay channel stayed full (TCP sent them again).
    pub relay_dropped: u64,
}

/// A running mesh node.
#[derive(Debug)]
pub struct Mesh {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    stop: Arc<Notify>,
    dial_timeout: Duration,
}

impl Mesh {
    /// Starts the mesh task for the node holding `secret`.
    pub fn start(
        secret: StaticSecret,
        map: watch::Receiver<NetworkMap>,
        inbound: mpsc::Receiver<(PeerKey, Bytes)>,
        outbound: mpsc::Sender<(PeerKey, Bytes)>,
    ) -> Mesh {
        let now = Instant::now();
        let current = map.borrow().clone();
        let state = State {
            core: Core::new(secret, &current),
            stack: Stack::new(current.self_node.mesh_ip, now),
            map: current,
            orphans: Vec::new(),
            closed: false,
            pings: Vec::new(),
            next_seq: 0,
            last_tick: now,
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            wake: Notify::new(),
            dropped: Default::default(),
        });
        let stop = Arc::new(Notify::new());
        let task = tokio::spawn(crate::driver::run(
            shared.clone(),
            stop.clone(),
            map,
            inbound,
            outbound,
        ));
        Mesh {
            shared,
            task: Some(task),
            stop,
            dial_timeout: DIAL_TIMEOUT,
        }
    }

    /// Sets how long `dial` waits for a connection.
    pub fn set_dial_timeout(&mut self, timeout: Duration) {
        self.dial_timeout = timeout;
    }

    /// The node's mesh IP.
    pub fn mesh_ip(&self) -> Ipv4Addr {
        self.shared.lock().core.mesh_ip()
    }

    /// Opens `port` on the node's mesh IP for peers.
    pub fn listen(&self, port: u16) -> Result<MeshListener, MeshError> {
        let mut st = self.shared.open()?;
        if port == 0 || st.stack.listeners.contains_key(&port) {
            return Err(MeshError::PortInUse(port));
        }
        st.stack.listen(port);
        drop(st);
        self.shared.wake.notify_one();
        Ok(MeshListener::new(self.shared.clone(), port))
    }

    fn resolve(&self, target: &str) -> Result<Ipv4Addr, MeshError> {
        let st = self.shared.lock();
        st.map
            .find_peer(target)
            .map(|p| p.mesh_ip)
            .ok_or_else(|| MeshError::UnknownPeer(target.to_string()))
    }

    /// Connects to `port` of a peer named by mesh IP or by name.
    pub async fn dial(&self, target: &str, port: u16) -> Result<MeshStream, MeshError> {
        let ip = self.resolve(target)?;
        let handle = {
            let mut st = self.shared.open()?;
            st.stack
                .connect(ip, port)
                .map_err(|_| MeshError::UnknownPeer(target.to_string()))?
        };
        self.shared.wake.notify_one();
        // The stream closes the socket if the wait is abandoned.
        let stream = MeshStream::new(self.shared.clone(), handle);
        let connected = std::future::poll_fn(|cx| {
            let mut st = self.shared.lock();
            let s = st.stack.tcp(handle);
            match s.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    s.register_send_waker(cx.waker());
                    Poll::Pending
                }
                tcp::State::Closed | tcp::State::TimeWait => {
                    Poll::Ready(Err(MeshError::Refused { ip, port }))
                }
                _ => Poll::Ready(Ok(())),
            }
        });
        let after = self.dial_timeout;
        match tokio::time::timeout(after, connected).await {
            Ok(Ok(())) => Ok(stream),
            Ok(Err(e)) => Err(if self.shared.lock().closed {
                MeshError::Shutdown
            } else {
                e
            }),
            Err(_) => Err(MeshError::Timeout { ip, port, after }),
        }
    }

    /// The round trip of an ICMP echo to a peer, through its tunnel.
    pub async fn ping(&self, target: &str, timeout: Duration) -> Result<Duration, MeshError> {
        let ip = self.resolve(target)?;
        let rx = {
            let mut st = self.shared.open()?;
            let (tx, rx) = tokio::sync::oneshot::channel();
            st.next_seq = st.next_seq.wrapping_add(1);
            let seq = st.next_seq;
            st.pings.push((seq, Instant::now(), Some(tx)));
            let request = crate::ping::echo_request(seq);
            let _ = st.stack.icmp().send_slice(&request, ip.into());
            rx
        };
        self.shared.wake.notify_one();
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(rtt)) => Ok(rtt),
            Ok(Err(_)) => Err(MeshError::Shutdown),
            Err(_) => Err(MeshError::Timeout {
                ip,
                port: 0,
                after: timeout,
            }),
        }
    }

    /// The node's address and per-peer figures.
    pub fn status(&self) -> MeshStatus {
        let st = self.shared.lock();
        let now = Instant::now();
        let peers = st
            .core
            .stats()
            .into_iter()
            .map(|p| PeerStatus {
                name: p.node.name,
                public_key: p.node.public_key,
                mesh_ip: p.node.mesh_ip,
                path: "relay",
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                last_handshake_ago: p.last_handshake.map(|t| now.saturating_duration_since(t)),
            })
            .collect();
        MeshStatus {
            mesh_ip: st.core.mesh_ip(),
            public_key: st.core.key(),
            peers,
            relay_dropped: self
                .shared
                .dropped
                .load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Stops the task: open streams read end-of-file, listeners and dials fail with `Shutdown`.
    pub async fn shutdown(mut self) {
        self.stop.notify_one();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            self.stop.notify_one();
            task.abort();
        }
    }
}

impl State {
    /// One round of work at `now`: timers, stack, ping replies, reaped sockets.
    pub(crate) fn drive(&mut self, now: Instant) {
        if now.saturating_duration_since(self.last_tick) >= TICK {
            self.last_tick = now;
            self.core.tick(now);
        }
        self.stack.poll(now, &mut self.core);
        while let Some(event) = self.core.poll_event() {
            match event {
                Event::HandshakeDone(k) => tracing::debug!(peer = %k, "mesh handshake done"),
                Event::PeerRemoved(k) => tracing::info!(peer = %k, "mesh peer left the map"),
            }
        }
        self.read_pings(now);
        self.reap();
    }

    /// How long the task may sleep.
    pub(crate) fn delay(&mut self, now: Instant) -> Duration {
        let tick = TICK.saturating_sub(now.saturating_duration_since(self.last_tick));
        self.stack.poll_delay(now).map_or(tick, |d| d.min(tick))
    }

    fn read_pings(&mut self, now: Instant) {
        while let Ok((reply, _)) = self.stack.icmp().recv() {
            if let Some(seq) = crate::ping::echo_reply_seq(reply) {
                for p in self.pings.iter_mut().filter(|p| p.0 == seq) {
                    if let Some(tx) = p.2.take() {
                        let _ = tx.send(now.saturating_duration_since(p.1));
                    }
                }
            }
        }
        self.pings
            .retain(|p| p.2.as_ref().is_some_and(|tx| !tx.is_closed()));
    }

    fn reap(&mut self) {
        let stack = &mut self.stack;
        self.orphans.retain(|h| {
            let s = stack.tcp(*h);
            let done = matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait);
            if done {
                stack.remove(*h);
            }
            !done
        });
    }

    /// Shuts everything: sockets reset, waiters woken.
    pub(crate) fn close(&mut self) {
        self.closed = true;
        for (_, socket) in self.stack.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                s.abort();
            }
        }
        for l in self.stack.listeners.values_mut() {
            if let Some(w) = l.waker.take() {
                w.wake();
            }
        }
        self.pings.clear();
    }

    /// A new network map.
    pub(crate) fn set_map(&mut self, map: NetworkMap) {
        self.core.update_map(&map);
        for gone in self
            .map
            .peers
            .iter()
            .filter(|p| map.find_key(&p.public_key).is_none())
        {
            self.stack.abort_connections(gone.mesh_ip);
        }
        if map.self_node.mesh_ip != self.map.self_node.mesh_ip {
            self.stack.set_ip(map.self_node.mesh_ip);
        }
        self.map = map;
    }
}
