//! `citadel-nexus`, the control plane (docs/control-plane.md): a job queue with leases, long-poll, events, cancellation,
//! a dead-letter list and node heartbeats, persisted in sled, behind an HTTP API that speaks the
//! Nexus wire format (docs/wire-format.md#nexus-http). `citadel nexus serve` runs it alone; `citadel work` embeds it
//! when nothing else is configured. This module owns starting and stopping it, the bearer token
//! (generated at first start, `DATA/token`, mode 0600) and the address file (`DATA/address`) that
//! lets `citadel submit` and `citadel work` on the same machine find it. It must never run jobs,
//! and it must never print or log the token.

pub mod api;
pub mod auth;
pub mod common;
pub mod credentials;
pub mod device;
mod device_api;
mod ids;
pub mod index;
pub(crate) mod kept_tokens;
pub mod mesh;
pub mod queue;
mod reclaim;
pub mod record;
pub mod retention;
mod sse;
pub mod store;
pub mod terminal_tokens;
pub mod ui;
mod ws;

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use queue::Retention;
pub use store::Store;

/// The port the control plane prefers on loopback.
pub const DEFAULT_PORT: u16 = 7411;

/// The control plane's folder inside a data directory.
pub fn data_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("nexus")
}

/// Reads the token of a control plane data folder, creating it (mode 0600) when missing.
pub fn load_or_create_token(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("token");
    if let Some(t) = read_token(dir)? {
        let mode = std::fs::metadata(&path)?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("restricting {} to mode 0600", path.display()))?;
        }
        return Ok(t);
    }
    let token = store::new_secret();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{token}")?;
    f.sync_all()?;
    Ok(token)
}

/// The token in `dir/token`, if there is one.
pub fn read_token(dir: &Path) -> anyhow::Result<Option<String>> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => Ok(Some(t.trim().to_string())),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The URL written by the control plane that last ran on `dir`, if any.
pub fn read_address(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("address"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// A running control plane.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub token: String,
    pub dir: PathBuf,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    reaper: JoinHandle<()>,
    retention: JoinHandle<()>,
}

impl Running {
    /// Stops accepting requests, waits for the server and makes the store durable.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.reaper.abort();
        self.retention.abort();
        let _ = std::fs::remove_file(self.dir.join("address"));
        self.task.await.context("the control plane task")?
    }

    /// Serves until `shutdown` fires (then stops cleanly) or the server fails.
    pub async fn serve_until(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        tokio::select! {
            () = shutdown.cancelled() => {}
            r = &mut self.task => {
                self.reaper.abort();
                self.retention.abort();
                return r.context("the control plane task")?;
            }
        }
        self.stop().await
    }
}

/// Where to listen: an exact address, or loopback from [`DEFAULT_PORT`] up to the first free port.
#[derive(Debug, Clone, Copy)]
pub enum Listen {
    Exact(SocketAddr),
    LoopbackFrom(u16),
}

impl Listen {
    /// Binds: the exact address, or the first free loopback port from the given one. Also
    /// used by the status server.
    pub async fn bind(self) -> anyhow::Result<tokio::net::TcpListener> {
        match self {
            Listen::Exact(addr) => tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}")),
            Listen::LoopbackFrom(port) => bind_loopback_from(port).await,
        }
    }
}

/// Opens the store in `dir`, binds and serves until [`Running::stop`].
pub async fn start(dir: &Path, listen: Listen) -> anyhow::Result<Running> {
    start_with(dir, listen, device::DeviceSettings::default()).await
}

/// [`start`], with the device authorization's code lifetime and polling interval.
pub async fn start_with(
    dir: &Path,
    listen: Listen,
    device: device::DeviceSettings,
) -> anyhow::Result<Running> {
    start_configured(dir, listen, device, Retention::default()).await
}

/// [`start_with`], keeping finished jobs as `retention` says (docs/control-plane.md#retention).
pub async fn start_configured(
    dir: &Path,
    listen: Listen,
    device: device::DeviceSettings,
    retention: Retention,
) -> anyhow::Result<Running> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to mode 0700", dir.display()))?;
    let token = load_or_create_token(dir)?;
    match reclaim::reclaim(&dir.join("db")) {
        // Another control plane holds the store: opening it says so below.
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => tracing::warn!(error = %e, "giving back the space of removed jobs failed"),
        Ok(_) => {}
    }
    let store = Arc::new(Store::open(&dir.join("db")).map_err(|e| match e {
        store::StoreError::Storage(io) if io.kind() == std::io::ErrorKind::WouldBlock => {
            anyhow::anyhow!(
                "another control plane is already running on {} (its store is locked)",
                dir.display()
            )
        }
        other => anyhow::Error::new(other).context("opening the control plane store"),
    })?);
    let listener = listen.bind().await?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(%addr, "the control plane listens beyond loopback; every request needs the bearer token");
    }
    let url = format!("http://{addr}");
    std::fs::write(dir.join("address"), format!("{url}\n"))
        .with_context(|| format!("writing {}", dir.join("address").display()))?;
    let tree = store.tree("credentials")?;
    let credentials =
        credentials::Credentials::open(tree).context("loading the node credentials")?;
    let app = Arc::new(common::AppState {
        store: store.clone(),
        token: token.clone(),
        credentials,
        device: device::DeviceAuth::new(device),
    });
    let mesh = mesh::MeshPlane::open(app.clone(), dir)?;
    let router = api::router(app.clone())
        .merge(retention::router(app.clone()))
        .merge(mesh.router())
        .merge(terminal_tokens::router(app.clone())?)
        .merge(ui::router(app, mesh)?);
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        let store = store.clone();
        async move {
            // No Nagle delay: WebSocket pushes are small frames that must leave at once.
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "setting TCP_NODELAY");
                }
            });
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
            .context("serving the control plane")?;
            store
                .flush()
                .await
                .context("flushing the control plane store")?;
            Ok(())
        }
    });
    let retention = tokio::spawn(retention::keep(store.clone(), retention));
    let reaper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tick.tick().await;
            match store.expire_leases() {
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = store.flush().await {
                        tracing::error!(error = %e, "flushing expired leases");
                    }
                }
                Err(e) => tracing::error!(error = %e, "expiring leases"),
            }
        }
    });
    tracing::info!(%addr, dir = %dir.display(), "control plane listening");
    Ok(Running {
        addr,
        url,
        token,
        dir: dir.to_path_buf(),
        stop,
        task,
        reaper,
        retention,
    })
}

async fn bind_loopback_from(port: u16) -> anyhow::Result<tokio::net::TcpListener> {
    let mut last = None;
    for p in port..port.saturating_add(50) {
        match tokio::net::TcpListener::bind(("127.0.0.1", p)).await {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow::anyhow!(
        "no free loopback port from {port}: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let t = load_or_create_token(dir.path()).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create_token(dir.path()).unwrap(), t);
        let mode = std::fs::metadata(dir.path().join("token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
