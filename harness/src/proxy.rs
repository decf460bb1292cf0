//! A TCP proxy on loopback that a test can cut, stall and restore ([`Proxy`]), to partition one
//! client (a worker) from a server (redis-server) while the server stays up for everyone else.
//! While cut, the open connections are closed and new ones are accepted and closed at once, so
//! the client sees errors; while stalled, every byte and every new connection is held until the
//! restore, as when a network drops packets: the client's calls hang instead of failing. Test
//! scaffolding only: it forwards to a server a test started.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A proxy from a loopback port to `upstream`; stops when dropped.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    /// Bumped on every cut: connections opened before it close.
    generation: watch::Sender<u64>,
    cuts: AtomicU64,
    /// While true, nothing is forwarded (and new connections wait).
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on an OS-chosen loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let (stalled, _) = watch::channel(false);
        let links = Links {
            upstream,
            cut: cut.clone(),
            generation: generation.clone(),
            stalled: stalled.clone(),
        };
        let task = tokio::spawn(accept(listener, links));
        Ok(Self {
            addr,
            cut,
            generation,
            cuts: AtomicU64::new(0),
            stalled,
            task,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every open connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let n = self.cuts.fetch_add(1, Ordering::SeqCst) + 1;
        self.generation.send_replace(n);
    }

    /// Holds every byte and every new connection until [`Proxy::restore`]: the client's calls
    /// hang, as behind a network that drops packets.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets connections through again (what was held while stalled goes on).
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
        self.stalled.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_replace(u64::MAX);
    }
}

/// What every forwarded connection shares.
#[derive(Clone)]
struct Links {
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
    stalled: watch::Sender<bool>,
}

async fn accept(listener: TcpListener, links: Links) {
    while let Ok((client, _)) = listener.accept().await {
        if links.cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut closed = links.generation.subscribe();
        closed.mark_unchanged();
        let links = links.clone();
        tokio::spawn(async move {
            if links.stalled.subscribe().wait_for(|s| !*s).await.is_err() {
                return;
            }
            let Ok(server) = TcpStream::connect(links.upstream).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::select! {
                () = pump(client_read, server_write, links.stalled.subscribe()) => {}
                () = pump(server_read, client_write, links.stalled.subscribe()) => {}
                _ = closed.changed() => {}
            }
        });
    }
}

/// Forwards one direction, holding what it read while the proxy is stalled.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
