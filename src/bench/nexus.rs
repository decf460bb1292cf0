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
use citadel_transports::{JobSource, NexusConfig, NexusSource};
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

#[derive(Debug, Serialize)]
struct Throughput {
    concurrency: usize,
    jobs: u64,
    seconds: f64,
    jobs_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
    mode: &'static str,
    rate: f64,
    jobs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    throughput: Vec<Throughput>,
    latency: Vec<Latency>,
}

struct Plane {
    url: String,
    token: String,
    http: reqwest::Client,
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
    let mut throughput = Vec::new();
    for (run_no, &concurrency) in args.concurrency.iter().enumerate() {
        eprintln!(
            "[{}] concurrency {concurrency}: submitting {} no-op jobs…",
            run_no + 1,
            args.jobs
        );
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16u64 {
            let plane = plane.clone();
            let jobs = args.jobs;
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
        let (counters, shutdown, task) =
            start_worker(&plane, &dir, concurrency, None, false).await?;
        let started = Instant::now();
        while counters.succeeded.load(Ordering::Relaxed) < args.jobs {
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
            jobs: args.jobs,
            seconds,
            jobs_per_sec: args.jobs as f64 / seconds,
        });
    }
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
            false,
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
                true,
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
    )
}

async fn measure(
    plane: &Plane,
    dir: &std::path::Path,
    mode: &'static str,
    rate: f64,
    total: usize,
    plain: bool,
) -> anyhow::Result<Latency> {
    let timer = Arc::new(TimedNoop::default());
    let (counters, shutdown, task) =
        start_worker(plane, dir, 16, Some(timer.clone()), plain).await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut enqueued = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let id = format!("{}-{i}", if plain { "p" } else { "l" });
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
    plain: bool,
) -> anyhow::Result<Started> {
    let (journal, _) = Journal::open(
        dir,
        JournalOptions {
            durability: Durability::Durable,
            recover: true,
        },
    )?;
    let mut cfg = NexusConfig::new(plane.url.clone(), "bench-worker");
    cfg.token = Some(plane.token.clone());
    cfg.force_plain = plain;
    let source: Arc<dyn JobSource> = Arc::new(NexusSource::connect(cfg).await?);
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

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("no-op jobs through the embedded control plane (loopback HTTP), one worker, journal durable");
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
