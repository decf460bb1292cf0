//! `citadel bench mesh`: two nodes joined to a control plane in this process (its real relay
//! over WebSocket, device authorization for each node's credential, the same joining code as
//! `citadel work`), then TCP throughput (MB/s through an echo service on one node's mesh
//! address, so every byte crosses the tunnel twice) and round trips (a 1-byte TCP echo and the
//! mesh's own ping), beside plain loopback TCP in the same run: the ratio is the figure. It
//! measures and prints; it asserts nothing.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use reqwest::Method;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

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
    /// Round trips timed.
    #[arg(long, default_value_t = 500)]
    round_trips: usize,
    #[arg(long)]
    json: bool,
}

/// One path's figures.
#[derive(Debug, Serialize)]
struct Figures {
    mb_per_s: f64,
    rtt_p50_us: f64,
    rtt_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    bytes: usize,
    round_trips: usize,
    mesh: Figures,
    loopback: Figures,
    /// The mesh's own ping (ICMP echo through the tunnel).
    ping_p50_us: f64,
    /// Mesh throughput as a share of loopback's.
    throughput_ratio: f64,
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
    let mesh = figures(stream, args).await?;
    let mut pings = Vec::with_capacity(args.round_trips);
    for _ in 0..args.round_trips {
        let rtt = b.mesh.ping("bench-a", Duration::from_secs(5)).await?;
        pings.push(rtt.as_secs_f64() * 1e6);
    }
    pings.sort_by(f64::total_cmp);
    let loopback = loopback(args).await?;
    Ok(Report {
        bytes: args.bytes,
        round_trips: args.round_trips,
        throughput_ratio: mesh.mb_per_s / loopback.mb_per_s,
        ping_p50_us: percentile(&pings, 0.5),
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
    figures(s, args).await
}

/// 1-byte round trips, then `bytes` through the echo (written and read back concurrently).
async fn figures<S>(s: S, args: &MeshBench) -> anyhow::Result<Figures>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(s);
    let mut rtts = Vec::with_capacity(args.round_trips);
    let mut one = [0u8; 1];
    for _ in 0..args.round_trips {
        let t = Instant::now();
        w.write_all(b"x").await?;
        r.read_exact(&mut one).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
    }
    rtts.sort_by(f64::total_cmp);
    let bytes = args.bytes;
    let started = Instant::now();
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
        anyhow::ensure!(n > 0, "the echo ended after {got} of {bytes} bytes");
        got += n;
    }
    let secs = started.elapsed().as_secs_f64();
    writer.await??;
    Ok(Figures {
        mb_per_s: bytes as f64 / 1e6 / secs,
        rtt_p50_us: percentile(&rtts, 0.5),
        rtt_p99_us: percentile(&rtts, 0.99),
    })
}

fn print(r: &Report) {
    let row = |name: &str, f: &Figures| {
        vec![
            name.to_string(),
            format!("{:.1}", f.mb_per_s),
            format!("{:.0}", f.rtt_p50_us),
            format!("{:.0}", f.rtt_p99_us),
        ]
    };
    println!(
        "{} bytes through a TCP echo, {} round trips of 1 byte",
        r.bytes, r.round_trips
    );
    crate::format::table(
        &["PATH", "MB/s", "RTT p50 µs", "RTT p99 µs"],
        &[
            row("mesh (relay)", &r.mesh),
            row("loopback TCP", &r.loopback),
        ],
    );
    println!(
        "mesh ping p50 {:.0} µs; mesh throughput {:.1}% of loopback",
        r.ping_p50_us,
        r.throughput_ratio * 100.0
    );
}
