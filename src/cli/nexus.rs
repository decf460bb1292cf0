//! `citadel nexus serve`: runs the embedded control plane alone (SPEC §5) until SIGTERM/SIGINT.
//! It prints where it listens and where the token is, never the token itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::nexus::{self, Listen};

#[derive(Debug, Subcommand)]
pub enum NexusCommand {
    /// Serve the control plane: the Nexus API, leases, long-poll, events, the dead-letter list.
    Serve(ServeArgs),
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (default: 127.0.0.1:7411, or the next free port).
    #[arg(long, env = "CITADEL_NEXUS_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Where the control plane keeps its jobs and its token (default: DATA_DIR/nexus).
    #[arg(long = "data", env = "CITADEL_NEXUS_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
}

pub async fn run(cmd: NexusCommand, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        NexusCommand::Serve(args) => serve(args, data_dir).await,
    }
}

async fn serve(args: ServeArgs, data_dir: &Path) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(|| nexus::data_dir(data_dir));
    let listen = match args.listen {
        Some(a) => Listen::Exact(a),
        None => Listen::LoopbackFrom(nexus::DEFAULT_PORT),
    };
    let running = nexus::start(&dir, listen).await?;
    eprintln!(
        "citadel control plane listening on {} (data {}, token in {})",
        running.url,
        dir.display(),
        dir.join("token").display()
    );
    let shutdown = CancellationToken::new();
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
            shutdown.cancel();
        });
    }
    running.serve_until(shutdown).await
}
