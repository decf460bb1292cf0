//! A TCP proxy on loopback that a test can cut and restore ([`Proxy`]), to partition one client
//! (a worker) from a server (redis-server) while the server stays up for everyone else. While
//! cut, the open connections are closed and new ones are accepted and closed at once, so the
//! client sees errors, not a hang. Test scaffolding only: it forwards to a server a test started.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

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
    task: JoinHandle<()>,
}

impl Proxy {
    /// Listens on an OS-chosen loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let (generation, _) = watch::channel(0u64);
        let task = tokio::spawn(accept(listener, upstream, cut.clone(), generation.clone()));
        Ok(Self {
            addr,
            cut,
            generation,
            cuts: AtomicU64::new(0),
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

    /// Lets connections through again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.generation.send_replace(u64::MAX);
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    cut: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
) {
    while let Ok((client, _)) = listener.accept().await {
        if cut.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        let mut closed = generation.subscribe();
        closed.mark_unchanged();
        tokio::spawn(async move {
            let Ok(server) = TcpStream::connect(upstream).await else {
                return;
            };
            let (mut client, mut server) = (client, server);
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = closed.changed() => {}
            }
        });
    }
}
