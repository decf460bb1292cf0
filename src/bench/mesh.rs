//! `citadel bench mesh`: two nodes joined to a control plane in this process (its real relay
//! over WebSocket, device authorization for each node's credential, the same joining code as
//! `citadel work`), then TCP throughput (MB/s through an echo service on one node's mesh
//! address, so every byte crosses the tunnel twice) and round trips (a 1-byte TCP echo and the
//! mesh's own ping), beside plain loopback TCP in the same run: the ratio is the figure. It
//! measures and prints; it asserts nothing.

use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;
use serde::Serialize;
use serde_json::json;

use super::percentile;
use crate::cli::remote::Plane;
use crate::cli::work::mesh::join::{join, Joined};

/// The mesh port of the echo service.
const ECHO_PORT: u16 = 7;

#[derive(Debug, Args)]
pub struct MeshBench {
    /// Bytes sent through the echo service for the throughput figure.
    #[arg(long, default_value_t = 64 << 20)]
    bytes: usize,
    /// Pings timed through the tunnel.
    #[arg(long, default_value_t = 500)]
    pings: usize,
    #[arg(long)]
    json: bool,
}

/// One path's figures.
#[derive(Debug, Serialize)]
struct Figures {
    mb_per_s: f64,
    /// The median of 200 one-byte round trips through the echo.
    rtt_p50_us: f64,
}

impl From<citadel_mesh::bench::Figures> for Figures {
    fn from(f: citadel_mesh::bench::Figures) -> Self {
        Self {
            mb_per_s: f.megabytes_per_s,
            rtt_p50_us: f.round_trip.as_secs_f64() * 1e6,
        }
    }
}

#[derive(Debug, Serialize)]
struct Report {
    bytes: usize,
    pings: usize,
    mesh: Figures,
    loopback: Figures,
    /// The mesh's own ping (ICMP echo through the tunnel).
    ping_p50_us: f64,
    /// Mesh throughput as a share of loopback's.
    throughput_ratio: f64,
    /// Datagrams the relay forwarded, and dropped because a node's queue was full (the
    /// tunnel's TCP then retransmits).
    relay_forwarded: u64,
    relay_queue_full: u64,
}

/// A count of the relay's frames (`citadel_mesh_relay_frames_total`) in this process.
fn relay_frames(result: &str) -> u64 {
    let sample = format!("citadel_mesh_relay_frames_total{{result=\"{result}\"}} ");
    citadel_nexus::mesh::metrics::render()
        .lines()
        .find_map(|l| l.strip_prefix(sample.as_str()))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

pub async fn run(args: MeshBench) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("citadel-bench-mesh-{}", std::process::id()));
    let plane = citadel_nexus::start(
        &dir,
        citadel_nexus::Listen::LoopbackFrom(citadel_nexus::DEFAULT_PORT),
    )
    .await
    .context("starting the control plane")?;
    let result = measure(&args, &plane.url, &plane.token).await;
    plane.stop().await.context("stopping the control plane")?;
    let _ = std::fs::remove_dir_all(&dir);
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

async fn measure(args: &MeshBench, url: &str, admin: &str) -> anyhow::Result<Report> {
    let a = node(url, admin, "bench-a").await?;
    let b = node(url, admin, "bench-b").await?;
    for n in [&a, &b] {
        let mut map = n.map.clone();
        tokio::time::timeout(
            Duration::from_secs(30),
            map.wait_for(|m| !m.peers.is_empty()),
        )
        .await
        .context("the nodes did not see each other within 30 s")??;
    }
    let listener = a.mesh.listen(ECHO_PORT)?;
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(citadel_mesh::bench::echo(s));
        }
    });
    let stream = b.mesh.dial("bench-a", ECHO_PORT).await?;
    let mesh = Figures::from(citadel_mesh::bench::measure(stream, args.bytes).await?);
    let mut pings = Vec::with_capacity(args.pings);
    for _ in 0..args.pings {
        let rtt = b.mesh.ping("bench-a", Duration::from_secs(5)).await?;
        pings.push(rtt.as_secs_f64() * 1e6);
    }
    pings.sort_by(f64::total_cmp);
    let loopback = loopback(args).await?;
    Ok(Report {
        bytes: args.bytes,
        pings: args.pings,
        throughput_ratio: mesh.mb_per_s / loopback.mb_per_s,
        ping_p50_us: percentile(&pings, 0.5),
        relay_forwarded: relay_frames("forwarded"),
        relay_queue_full: relay_frames("queue_full"),
        mesh,
        loopback,
    })
}

/// A node enrolled by device authorization (approved with the admin token), joined.
async fn node(url: &str, admin: &str, name: &str) -> anyhow::Result<Joined> {
    let anonymous = Plane::anonymous(url)?;
    let start = json!({"client_id": "citadel-bench", "hostname": name, "machine_id": name});
    let started = anonymous
        .call(Method::POST, "/api/fabric/device-auth/start", Some(&start))
        .await?;
    let approver = Plane::locate(Some(url), Some(admin), std::path::Path::new("/"))?;
    let approve = json!({"user_code": started["user_code"], "org": "bench"});
    approver
        .call(Method::POST, "/api/v1/device-auth/approve", Some(&approve))
        .await?;
    let grant = json!({"device_code": started["device_code"],
                       "grant_type": "urn:ietf:params:oauth:grant-type:device_code"});
    let creds = anonymous
        .call(Method::POST, "/api/fabric/device-auth/token", Some(&grant))
        .await?;
    let credential = creds["access_token"]
        .as_str()
        .context("the control plane sent no access_token")?;
    let key = crate::mesh::key::NodeKey::generate()?;
    join(url, credential, &key)
        .await
        .map_err(|why| anyhow::anyhow!("{name} could not join the mesh: {why}"))
}

/// Plain loopback TCP through the same echo.
async fn loopback(args: &MeshBench) -> anyhow::Result<Figures> {
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = tcp.local_addr()?;
    tokio::spawn(async move {
        while let Ok((s, _)) = tcp.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(citadel_mesh::bench::echo(s));
        }
    });
    let s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(citadel_mesh::bench::measure(s, args.bytes).await?.into())
}

fn print(r: &Report) {
    let row = |name: &str, f: &Figures| {
        vec![
            name.to_string(),
            format!("{:.1}", f.mb_per_s),
            format!("{:.0}", f.rtt_p50_us),
        ]
    };
    println!(
        "{} bytes through a TCP echo, 200 one-byte round trips",
        r.bytes
    );
    crate::format::table(
        &["PATH", "MB/s", "RTT p50 µs"],
        &[
            row("mesh (relay)", &r.mesh),
            row("loopback TCP", &r.loopback),
        ],
    );
    println!(
        "mesh ping p50 {:.0} µs ({} pings); mesh throughput {:.1}% of loopback",
        r.ping_p50_us,
        r.pings,
        r.throughput_ratio * 100.0
    );
    println!(
        "relay: {} datagrams forwarded, {} dropped on a full queue",
        r.relay_forwarded, r.relay_queue_full
    );
}
