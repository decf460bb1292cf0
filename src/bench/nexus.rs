//! `citadel bench nexus`: no-op jobs through the embedded control plane (started in this process
//! on a free loopback port, with its own temporary data folder) into one worker (the real runner,
//! nexus source and journal). Throughput: N jobs are submitted first, then drained at each
//! concurrency. Dispatch latency: jobs are submitted at a fixed rate and the time from just before
//! each `POST /api/v1/jobs` to the moment its handler starts is recorded, with long-poll and,
//! for comparison, with plain 5 s polling (SPEC §9.4, as the Go agent). Nothing here asserts.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use citadel_journal::{Durability, Journal, JournalOptions};
use citadel_transports::{
    websocket, JobSource, NexusConfig, NexusSource, WebSocketConfig, WebSocketSource,
};
use clap::Args;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::TimedNoop;
use crate::handlers::{Registry, ShellPolicy};
use crate::nexus::{self, Listen};
use crate::runner::{Runner, RunnerConfig};

#[derive(Debug, Args)]
pub struct NexusBench {
    /// Concurrency levels to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    concurrency: Vec<usize>,
    /// Jobs per throughput run.
    #[arg(long, default_value_t = 2000)]
    jobs: u64,
    /// Offered load of the latency run, jobs per second.
    #[arg(long, default_value_t = 100)]
    rate: u64,
    /// Length of the long-poll latency run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    /// Jobs of the plain-polling comparison (one per second; 0 skips it).
    #[arg(long, default_value_t = 5)]
    plain_jobs: usize,
    #[arg(long)]
    json: bool,
}

/// How the bench worker takes jobs from the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Via {
    /// The nexus transport, long-polling claims.
    LongPoll,
    /// The nexus transport speaking only SPEC §9.4 (5 s polling).
    Plain,
    /// The WebSocket job push.
    WebSocket,
}

impl Via {
    fn tag(self) -> &'static str {
        match self {
            Via::LongPoll => "l",
            Via::Plain => "p",
            Via::WebSocket => "w",
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Throughput {
    concurrency: usize,
    jobs: u64,
    seconds: f64,
    jobs_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    mode: &'static str,
    rate: f64,
    jobs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Report {
    pub(super) throughput: Vec<Throughput>,
    pub(super) latency: Vec<Latency>,
}

pub(super) struct Plane {
    pub(super) url: String,
    pub(super) token: String,
    pub(super) http: reqwest::Client,
}

impl Plane {
    async fn submit(&self, id: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/v1/jobs", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"id": id, "type": "noop"}))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "submit: {}", resp.status());
        Ok(())
    }
}

pub async fn run(args: NexusBench) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(format!("citadel-bench-nexus-{}", std::process::id()));
    let _ = rustls::crypto::ring::default_provider().install_default();
    let running = nexus::start(&tmp.join("plane"), Listen::LoopbackFrom(17_411))
        .await
        .context("starting the control plane")?;
    let plane = Arc::new(Plane {
        url: running.url.clone(),
        token: running.token.clone(),
        http: reqwest::Client::new(),
    });
    let throughput = throughput(&plane, &tmp, &args.concurrency, args.jobs, Via::LongPoll).await?;
    let mut latency = Vec::new();
    let total = (args.rate as f64 * args.latency_for.as_secs_f64()) as usize;
    eprintln!(
        "long-poll dispatch latency: {} jobs/s for {:?}…",
        args.rate, args.latency_for
    );
    latency.push(
        measure(
            &plane,
            &tmp.join("journal-lp"),
            "long-poll",
            args.rate as f64,
            total,
            Via::LongPoll,
        )
        .await?,
    );
    if args.plain_jobs > 0 {
        eprintln!("plain 5 s polling: {} jobs, one a second…", args.plain_jobs);
        latency.push(
            measure(
                &plane,
                &tmp.join("journal-plain"),
                "plain 5 s poll",
                1.0,
                args.plain_jobs,
                Via::Plain,
            )
            .await?,
        );
    }
    running.stop().await?;
    std::fs::remove_dir_all(&tmp).ok();
    print(
        &Report {
            throughput,
            latency,
        },
        args.json,
        "no-op jobs through the embedded control plane (loopback HTTP), one worker, journal durable",
    )
}

/// Submits `jobs` no-op jobs, then drains them with one worker at each concurrency.
pub(super) async fn throughput(
    plane: &Arc<Plane>,
    tmp: &std::path::Path,
    concurrencies: &[usize],
    jobs: u64,
    via: Via,
) -> anyhow::Result<Vec<Throughput>> {
    let mut throughput = Vec::new();
    for (run_no, &concurrency) in concurrencies.iter().enumerate() {
        eprintln!(
            "[{}] concurrency {concurrency}: submitting {} no-op jobs…",
            run_no + 1,
            jobs
        );
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16u64 {
            let plane = plane.clone();
            tasks.spawn(async move {
                let mut i = w;
                while i < jobs {
                    plane.submit(&format!("t{run_no}-{i}")).await?;
                    i += 16;
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        let dir = tmp.join(format!("journal-{run_no}"));
        let (counters, shutdown, task) = start_worker(plane, &dir, concurrency, None, via).await?;
        let started = Instant::now();
        while counters.succeeded.load(Ordering::Relaxed) < jobs {
            tokio::time::sleep(Duration::from_millis(2)).await;
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the worker stalled"
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        shutdown.cancel();
        task.await??;
        throughput.push(Throughput {
            concurrency,
            jobs,
            seconds,
            jobs_per_sec: jobs as f64 / seconds,
        });
    }
    Ok(throughput)
}

pub(super) async fn measure(
    plane: &Plane,
    dir: &std::path::Path,
    mode: &'static str,
    rate: f64,
    total: usize,
    via: Via,
) -> anyhow::Result<Latency> {
    let timer = Arc::new(TimedNoop::default());
    let (counters, shutdown, task) = start_worker(plane, dir, 16, Some(timer.clone()), via).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut enqueued = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let id = format!("{}-{i}", via.tag());
        let at = Instant::now();
        plane.submit(&id).await?;
        enqueued.push((id, at));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.succeeded.load(Ordering::Relaxed) < total as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    let ms = timer.latencies_ms(&enqueued);
    anyhow::ensure!(
        ms.len() == total && total > 0,
        "{} of {total} latency jobs ran",
        ms.len()
    );
    let pct = |p: f64| super::percentile(&ms, p);
    Ok(Latency {
        mode,
        rate,
        jobs: ms.len(),
        p50_ms: pct(0.5),
        p90_ms: pct(0.9),
        p99_ms: pct(0.99),
        max_ms: ms[ms.len() - 1],
    })
}

type Started = (
    Arc<crate::runner::Counters>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

async fn start_worker(
    plane: &Plane,
    dir: &std::path::Path,
    concurrency: usize,
    timer: Option<Arc<TimedNoop>>,
    via: Via,
) -> anyhow::Result<Started> {
    let (journal, _) = Journal::open(
        dir,
        JournalOptions {
            durability: Durability::Durable,
            recover: true,
        },
    )?;
    let source: Arc<dyn JobSource> = if via == Via::WebSocket {
        let mut cfg = WebSocketConfig::new(websocket::ws_url(&plane.url)?, "bench-worker");
        cfg.token = Some(plane.token.clone());
        Arc::new(WebSocketSource::connect(cfg).await?)
    } else {
        let mut cfg = NexusConfig::new(plane.url.clone(), "bench-worker");
        cfg.token = Some(plane.token.clone());
        cfg.force_plain = via == Via::Plain;
        Arc::new(NexusSource::connect(cfg).await?)
    };
    let mut registry = Registry::builtin(ShellPolicy::default());
    if let Some(t) = &timer {
        registry.register("noop", t.clone());
    }
    let mut config = RunnerConfig::new("bench-node", "bench-worker");
    config.concurrency = concurrency;
    let runner = Runner::new(source, journal, registry, config);
    let counters = runner.counters();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(token).await });
    Ok((counters, shutdown, task))
}

pub(super) fn print(report: &Report, json: bool, title: &str) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("{title}");
    let rows: Vec<Vec<String>> = report
        .throughput
        .iter()
        .map(|t| {
            vec![
                t.concurrency.to_string(),
                t.jobs.to_string(),
                format!("{:.2}", t.seconds),
                format!("{:.0}", t.jobs_per_sec),
            ]
        })
        .collect();
    crate::cli::table(&["CONCURRENCY", "JOBS", "SECONDS", "JOBS/S"], &rows);
    for l in &report.latency {
        println!(
            "submit → handler start, {} ({} jobs at {} jobs/s): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            l.mode, l.jobs, l.rate, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
        );
    }
    Ok(())
}
