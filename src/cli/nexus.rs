//! `citadel nexus serve`: runs the embedded control plane alone (docs/control-plane.md) until SIGTERM/SIGINT.
//! It prints where it listens and where the token is, never the token itself.
//! `citadel nexus approve CODE`: approves (or `--deny`) a node waiting in `citadel init`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use citadel_nexus::{self as nexus, Listen};

#[derive(Debug, Subcommand)]
pub enum NexusCommand {
    /// Serve the control plane: the Nexus API, leases, long-poll, events, the dead-letter list.
    Serve(ServeArgs),
    /// The control plane's store: jobs held by state, events stored, bytes on disk.
    Status(StatusArgs),
    /// Let a node that runs `citadel init` join: give the code it shows (or `--deny` it). The node
    /// gets its own credential, for the organization `--org` (default `default`). With no code,
    /// lists the nodes waiting.
    Approve(ApproveArgs),
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    /// The code the node shows, e.g. BCDF-GHJK (case and dashes do not matter).
    code: Option<String>,
    /// Refuse the node instead.
    #[arg(long)]
    deny: bool,
    /// The organization the node joins: it claims only that organization's jobs.
    #[arg(long, value_name = "ORG", conflicts_with = "deny")]
    org: Option<String>,
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Remove finished jobs (succeeded, failed, cancelled) this long after they finished;
    /// dead-lettered jobs stay until requeued or purged (docs/control-plane.md#retention).
    #[arg(
        long,
        env = "CITADEL_NEXUS_RETENTION",
        default_value = "7d",
        value_name = "AGE"
    )]
    retention: String,
    /// Keep at most this many finished jobs, removing the oldest first.
    #[arg(
        long,
        env = "CITADEL_NEXUS_RETENTION_MAX_JOBS",
        default_value_t = 100_000,
        value_name = "N"
    )]
    retention_max_jobs: usize,
    /// Address to listen on (default: 127.0.0.1:7411, or the next free port).
    #[arg(long, env = "CITADEL_NEXUS_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Where the control plane keeps its jobs and its token (default: DATA_DIR/nexus).
    #[arg(long = "data", env = "CITADEL_NEXUS_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// How long a node's device code (from `citadel init`) stays valid.
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    device_code_ttl: String,
    /// The polling interval nodes are told to keep while they wait for approval.
    #[arg(long, default_value = "5s", value_name = "DURATION")]
    device_poll_interval: String,
}

pub async fn run(cmd: NexusCommand, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        NexusCommand::Serve(args) => serve(args, data_dir).await,
        NexusCommand::Approve(args) => approve(args, data_dir).await,
        NexusCommand::Status(args) => status(args, data_dir).await,
    }
}

async fn serve(args: ServeArgs, data_dir: &Path) -> anyhow::Result<()> {
    let dir = args.data.unwrap_or_else(|| nexus::data_dir(data_dir));
    let listen = match args.listen {
        Some(a) => Listen::Exact(a),
        None => Listen::LoopbackFrom(nexus::DEFAULT_PORT),
    };
    let device = nexus::device::DeviceSettings {
        ttl: crate::format::parse_duration(&args.device_code_ttl).context("--device-code-ttl")?,
        interval: crate::format::parse_duration(&args.device_poll_interval)
            .context("--device-poll-interval")?,
    };
    let retention = nexus::Retention {
        max_age: Some(crate::format::parse_duration(&args.retention).context("--retention")?),
        max_finished: Some(args.retention_max_jobs),
    };
    let running = nexus::start_configured(&dir, listen, device, retention).await?;
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

async fn approve(args: ApproveArgs, data_dir: &Path) -> anyhow::Result<()> {
    let plane = args.plane.locate(data_dir)?;
    let Some(code) = args.code else {
        let list = plane
            .call(reqwest::Method::GET, "/api/v1/device-auth/pending", None)
            .await?;
        let rows: Vec<Vec<String>> = list["pending"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                vec![
                    p["user_code"].as_str().unwrap_or("").to_string(),
                    p["hostname"].as_str().unwrap_or("").to_string(),
                    format!("{}s", p["expires_in"].as_u64().unwrap_or(0)),
                ]
            })
            .collect();
        if rows.is_empty() {
            println!("no node is waiting for approval");
        } else {
            crate::format::table(&["CODE", "HOST", "EXPIRES IN"], &rows);
        }
        return Ok(());
    };
    let mut body = serde_json::json!({ "user_code": code, "approve": !args.deny });
    if let Some(org) = &args.org {
        body["org"] = serde_json::json!(org);
    }
    let r = plane
        .call(
            reqwest::Method::POST,
            "/api/v1/device-auth/approve",
            Some(&body),
        )
        .await?;
    let org = match r["org"].as_str() {
        Some(org) => format!(", org {org}"),
        None => String::new(),
    };
    println!(
        "{} {} ({}{org})",
        if args.deny { "denied" } else { "approved" },
        r["user_code"].as_str().unwrap_or(""),
        r["hostname"].as_str().unwrap_or("")
    );
    Ok(())
}

async fn status(args: StatusArgs, data_dir: &Path) -> anyhow::Result<()> {
    let plane = args.plane.locate(data_dir)?;
    let s = plane
        .call(reqwest::Method::GET, "/api/v1/stats", None)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(());
    }
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let states: Vec<String> = s["by_state"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {}", n(v)))
        .collect();
    println!("jobs      {} ({})", n(&s["jobs"]), states.join(", "));
    println!("events    {}", n(&s["events"]));
    println!("on disk   {}", crate::format::bytes(n(&s["bytes_on_disk"])));
    Ok(())
}
