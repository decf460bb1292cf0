//! `citadel bench websocket`: the same measurement as `citadel bench nexus` (its plane, worker
//! and report are reused), with the worker fed by the control plane's WebSocket job push instead
//! of long-poll claims: no-op jobs/s at each concurrency, and submit → handler-start latency at
//! a fixed offered load. Nothing here asserts.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;

use super::nexus::{self as bench, Plane, Report, Via};
use crate::nexus::{self, Listen};

#[derive(Debug, Args)]
pub struct WebSocketBench {
    /// Concurrency levels to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 2000)]
    jobs: u64,
    /// Offered load of the latency run, jobs per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Length of the latency run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: WebSocketBench) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("citadel-bench-ws-{}", std::process::id()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let running = nexus::start(&tmp.join("plane"), Listen::LoopbackFrom(17_461))
        .await
        .context("starting the control plane")?;
    let plane = Arc::new(Plane {
        url: running.url.clone(),
        token: running.token.clone(),
        http: reqwest::Client::new(),
    });
    let throughput =
        bench::throughput(&plane, &tmp, &args.concurrency, args.jobs, Via::WebSocket).await?;
    let total = (args.rate as f64 * args.latency_for.as_secs_f64()) as usize;
    eprintln!(
        "WebSocket push dispatch latency: {} jobs/s for {:?}…",
        args.rate, args.latency_for
    );
    let latency = vec![
        bench::measure(
            &plane,
            &tmp.join("journal-ws"),
            "websocket push",
            args.rate as f64,
            total,
            Via::WebSocket,
        )
        .await?,
    ];
    running.stop().await?;
    std::fs::remove_dir_all(&tmp).ok();
    bench::print(
        &Report {
            throughput,
            latency,
        },
        args.json,
        "no-op jobs pushed over the control plane's WebSocket (loopback), one worker, journal durable",
    )
}
