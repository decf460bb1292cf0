//! In-process meshes for tests and the benchmark: an in-memory relay that forwards datagrams
//! between mesh nodes as the control plane's WebSocket relay does (source key in, destination key
//! out), checking each is a WireGuard message, and `throughput`, which measures two meshes against
//! plain loopback TCP in one run. Never used by a running node.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, watch};
use x25519_dalek::StaticSecret;

use crate::map::{MapNode, NetworkMap, PeerKey};
use crate::Mesh;

/// Datagrams each relay channel holds.
const CHANNEL: usize = 1024;

/// What the relay saw.
#[derive(Debug, Default)]
pub struct RelayCounts {
    pub forwarded: AtomicU64,
    /// Datagrams that did not start with a WireGuard type 1–4 and three zero bytes.
    pub malformed: AtomicU64,
    /// Datagrams to a key the relay does not know.
    pub unroutable: AtomicU64,
}

/// Whether a datagram starts like a WireGuard message: type 1–4, then three zero bytes.
pub fn is_wireguard(d: &[u8]) -> bool {
    d.len() >= 4 && (1..=4).contains(&d[0]) && d[1..4] == [0, 0, 0]
}

/// A node for a test: its secret and map entry.
pub struct TestNode {
    pub secret: StaticSecret,
    pub node: MapNode,
}

impl std::fmt::Debug for TestNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestNode")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl TestNode {
    /// A fresh key with the mesh IP 100.64.0.`n`.
    pub fn new(name: &str, n: u8) -> Self {
        let secret = StaticSecret::random();
        let node = MapNode {
            node_id: format!("node-{n}"),
            name: name.to_string(),
            public_key: PeerKey::from_secret(&secret),
            mesh_ip: Ipv4Addr::new(100, 64, 0, n),
        };
        TestNode { secret, node }
    }

    /// This node's map with these peers.
    pub fn map(&self, version: u64, peers: &[&TestNode]) -> NetworkMap {
        NetworkMap {
            version,
            self_node: self.node.clone(),
            peers: peers.iter().map(|p| p.node.clone()).collect(),
        }
    }
}

/// Where the relay delivers datagrams for each key.
type Routes = HashMap<PeerKey, mpsc::Sender<(PeerKey, Bytes)>>;

/// An in-memory relay: each attached node gets channels as the control plane's relay would.
#[derive(Debug, Default)]
pub struct MemoryRelay {
    routes: Arc<std::sync::Mutex<Routes>>,
    pub counts: Arc<RelayCounts>,
}

impl MemoryRelay {
    /// Starts a mesh for `node` with `map`, its datagrams forwarded through this relay.
    pub fn attach(&self, node: &TestNode, map: watch::Receiver<NetworkMap>) -> Mesh {
        let (in_tx, in_rx) = mpsc::channel(CHANNEL);
        let (out_tx, mut out_rx) = mpsc::channel::<(PeerKey, Bytes)>(CHANNEL);
        let src = node.node.public_key;
        self.routes.lock().expect("relay routes").insert(src, in_tx);
        let (routes, counts) = (self.routes.clone(), self.counts.clone());
        tokio::spawn(async move {
            while let Some((dst, datagram)) = out_rx.recv().await {
                if !is_wireguard(&datagram) {
                    counts.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let route = routes.lock().expect("relay routes").get(&dst).cloned();
                match route {
                    Some(tx) if tx.send((src, datagram)).await.is_ok() => {
                        counts.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        counts.unroutable.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        Mesh::start(node.secret.clone(), map, in_rx, out_tx)
    }
}

/// Two meshes that know each other, with their map senders kept alive.
pub fn pair(relay: &MemoryRelay) -> (Mesh, Mesh, [watch::Sender<NetworkMap>; 2]) {
    let (a, b) = (TestNode::new("alpha", 1), TestNode::new("beta", 2));
    let (ta, ra) = watch::channel(a.map(1, &[&b]));
    let (tb, rb) = watch::channel(b.map(1, &[&a]));
    (relay.attach(&a, ra), relay.attach(&b, rb), [ta, tb])
}

/// One transport's figures.
#[derive(Debug, Clone, Copy)]
pub struct Figures {
    pub megabytes_per_s: f64,
    /// Median round trip of a 1-byte echo.
    pub round_trip: Duration,
}

/// The mesh's figures beside plain loopback TCP's, measured in the same run.
#[derive(Debug, Clone, Copy)]
pub struct BenchReport {
    pub mesh: Figures,
    pub loopback: Figures,
}

/// Sends `bytes` through an echo service and times 200 one-byte round trips, over two in-process
/// meshes and over loopback TCP.
pub async fn throughput(bytes: usize) -> std::io::Result<BenchReport> {
    let relay = MemoryRelay::default();
    let (a, b, _maps) = pair(&relay);
    let listener = a.listen(7).map_err(std::io::Error::other)?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
    let s = b.dial("alpha", 7).await.map_err(std::io::Error::other)?;
    let mesh = measure(s, bytes).await?;

    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(echo(s));
        }
    });
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let loopback = measure(s, bytes).await?;
    a.shutdown().await;
    b.shutdown().await;
    Ok(BenchReport { mesh, loopback })
}

/// Echoes everything back until end of file.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(s: S) -> std::io::Result<u64> {
    let (mut r, mut w) = tokio::io::split(s);
    tokio::io::copy(&mut r, &mut w).await
}

pub async fn measure<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    s: S,
    bytes: usize,
) -> std::io::Result<Figures> {
    let (mut r, mut w) = tokio::io::split(s);
    let mut rtts = Vec::with_capacity(200);
    let mut one = [0u8; 1];
    for _ in 0..200 {
        let t = Instant::now();
        w.write_all(b"x").await?;
        r.read_exact(&mut one).await?;
        rtts.push(t.elapsed());
    }
    rtts.sort();
    let start = Instant::now();
    let writer = tokio::spawn(async move {
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len());
            w.write_all(&chunk[..n]).await?;
            left -= n;
        }
        Ok::<_, std::io::Error>(w)
    });
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < bytes {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    let secs = start.elapsed().as_secs_f64();
    writer.await.map_err(std::io::Error::other)??;
    Ok(Figures {
        megabytes_per_s: bytes as f64 / 1e6 / secs,
        round_trip: rtts[rtts.len() / 2],
    })
}
