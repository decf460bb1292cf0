//! `citadel bench redis`: no-op jobs through Redis Streams into one worker (this process, the
//! real runner, source and journal). Throughput: N jobs are enqueued first, then drained at each
//! concurrency, with the journal durable and, for comparison only, buffered. Dispatch latency:
//! jobs are enqueued at a fixed rate and the time from just before each `XADD` to the moment its
//! handler starts is recorded. Uses `--redis-url`, or starts a throwaway local redis-server.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use citadel_journal::{Durability, Journal, JournalOptions};
use citadel_transports::redis::LocalRedis;
use citadel_transports::{JobSource, RedisConfig, RedisSource};
use clap::Args;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::TimedNoop;
use crate::handlers::{Registry, ShellPolicy};
use crate::runner::{Runner, RunnerConfig};

#[derive(Debug, Args)]
pub struct RedisBench {
    /// Redis to use (default: start a local redis-server on a free port).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    load: Load,
}

/// The load of a transport bench (shared by the redis and nats benches).
#[derive(Debug, Args)]
pub(super) struct Load {
    /// Concurrency levels to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Jobs per throughput run (a quarter of it at concurrency 1).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: u64,
    /// Offered load of the latency run, jobs per second.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    /// Length of the latency run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub latency_for: Duration,
    /// Worker concurrency during the latency run.
    #[arg(long, default_value_t = 16)]
    pub latency_concurrency: usize,
    #[arg(long)]
    pub json: bool,
}

impl Load {
    /// Jobs of the throughput run at `concurrency` (a quarter at concurrency 1).
    pub fn jobs_at(&self, concurrency: usize) -> u64 {
        if concurrency == 1 {
            self.jobs / 4
        } else {
            self.jobs
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Throughput {
    concurrency: usize,
    durable: bool,
    jobs: u64,
    seconds: f64,
    jobs_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub(super) struct Latency {
    rate: u64,
    concurrency: usize,
    jobs: usize,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    redis: String,
    throughput: Vec<Throughput>,
    latency: Latency,
}

pub(super) struct Setup {
    pub(super) url: String,
    pub(super) stream: String,
    pub(super) dir: std::path::PathBuf,
}

pub async fn run(args: RedisBench) -> anyhow::Result<()> {
    let (local, url) = redis_or_local(args.redis_url.as_deref()).await?;
    let tmp = std::env::temp_dir().join(format!("citadel-bench-redis-{}", std::process::id()));
    let mut throughput = Vec::new();
    let mut run_no = 0;
    for (concurrency, durability) in plan(&args.load.concurrency) {
        run_no += 1;
        let jobs = args.load.jobs_at(concurrency);
        let setup = Setup {
            url: url.clone(),
            stream: format!("bench:{}:{run_no}", std::process::id()),
            dir: tmp.join(format!("run-{run_no}")),
        };
        eprintln!(
            "[{run_no}] concurrency {concurrency}, journal {}: enqueueing {jobs} no-op jobs…",
            if durability == Durability::Durable {
                "durable"
            } else {
                "buffered"
            }
        );
        enqueue_all(&setup, jobs).await?;
        let started = start_worker(&setup, concurrency, durability, vec![]).await?;
        throughput.push(drain(started, concurrency, durability, jobs).await?);
        std::fs::remove_dir_all(&setup.dir).ok();
    }

    run_no += 1;
    eprintln!(
        "[{run_no}] dispatch latency: {} jobs/s for {:?} at concurrency {}…",
        args.load.rate, args.load.latency_for, args.load.latency_concurrency
    );
    let setup = Setup {
        url: url.clone(),
        stream: format!("bench:{}:{run_no}", std::process::id()),
        dir: tmp.join(format!("run-{run_no}")),
    };
    let timer = Arc::new(TimedNoop::default());
    let started = start_worker(
        &setup,
        args.load.latency_concurrency,
        Durability::Durable,
        vec![("noop", timer.clone())],
    )
    .await?;
    let enqueued = offer_load(&setup, args.load.rate, args.load.latency_for).await?;
    let latency = finish_latency(started, &timer, &enqueued, &args.load).await?;
    std::fs::remove_dir_all(&tmp).ok();
    print(
        &Report {
            redis: if local.is_some() {
                "local redis-server (started by the bench)".into()
            } else {
                url
            },
            throughput,
            latency,
        },
        args.load.json,
    )
}

/// The Redis at `url`, or a throwaway local redis-server (kept alive by the returned handle).
pub(super) async fn redis_or_local(
    url: Option<&str>,
) -> anyhow::Result<(Option<LocalRedis>, String)> {
    match url {
        Some(u) => Ok((None, u.to_string())),
        None => {
            let local = LocalRedis::start()
                .await
                .context("starting a local redis-server for the benchmark")?;
            let url = local.url();
            Ok((Some(local), url))
        }
    }
}

pub(super) async fn connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Enqueues `jobs` no-op entries in the wire format, pipelined.
async fn enqueue_all(setup: &Setup, jobs: u64) -> anyhow::Result<()> {
    let mut c = connection(&setup.url).await?;
    let mut i = 0;
    while i < jobs {
        let mut pipe = redis::pipe();
        for _ in 0..500.min(jobs - i) {
            pipe.cmd("XADD")
                .arg(&setup.stream)
                .arg("*")
                .arg("jobId")
                .arg(format!("b-{i}"))
                .arg("type")
                .arg("noop")
                .arg("payload")
                .arg("{}")
                .ignore();
            i += 1;
        }
        pipe.query_async::<()>(&mut c).await?;
    }
    Ok(())
}

/// Enqueues one job every 1/rate seconds for `length`; returns each job's enqueue instant.
async fn offer_load(
    setup: &Setup,
    rate: u64,
    length: Duration,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let mut c = connection(&setup.url).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate as f64 * length.as_secs_f64()) as usize;
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let id = format!("l-{i}");
        let at = Instant::now();
        redis::cmd("XADD")
            .arg(&setup.stream)
            .arg("*")
            .arg("jobId")
            .arg(&id)
            .arg("type")
            .arg("noop")
            .arg("payload")
            .arg("{}")
            .query_async::<String>(&mut c)
            .await?;
        out.push((id, at));
    }
    Ok(out)
}

/// The throughput runs: each concurrency with the journal durable, then the highest one with it
/// buffered, for comparison.
pub(super) fn plan(concurrency: &[usize]) -> Vec<(usize, Durability)> {
    let mut plan: Vec<(usize, Durability)> = concurrency
        .iter()
        .map(|&c| (c, Durability::Durable))
        .collect();
    if let Some(&max) = concurrency.iter().max() {
        plan.push((max, Durability::Buffered));
    }
    plan
}

/// Waits until the worker has run `jobs` jobs, stops it and reports the rate.
pub(super) async fn drain(
    started: Started,
    concurrency: usize,
    durability: Durability,
    jobs: u64,
) -> anyhow::Result<Throughput> {
    let (counters, shutdown, task) = started;
    let began = Instant::now();
    while counters.succeeded.load(Ordering::Relaxed) < jobs {
        tokio::time::sleep(Duration::from_millis(2)).await;
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the worker stalled"
        );
    }
    let seconds = began.elapsed().as_secs_f64();
    shutdown.cancel();
    task.await??;
    Ok(Throughput {
        concurrency,
        durable: durability == Durability::Durable,
        jobs,
        seconds,
        jobs_per_sec: jobs as f64 / seconds,
    })
}

/// Waits (a minute at most) until the latency run's jobs have run, stops the worker and
/// computes the dispatch latency percentiles.
pub(super) async fn finish_latency(
    started: Started,
    timer: &TimedNoop,
    enqueued: &[(String, Instant)],
    load: &Load,
) -> anyhow::Result<Latency> {
    let (counters, shutdown, task) = started;
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.succeeded.load(Ordering::Relaxed) < enqueued.len() as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    let ms = timer.latencies_ms(enqueued);
    anyhow::ensure!(
        !ms.is_empty() && ms.len() == enqueued.len(),
        "{} of {} latency jobs ran",
        ms.len(),
        enqueued.len()
    );
    let pct = |p: f64| super::percentile(&ms, p);
    Ok(Latency {
        rate: load.rate,
        concurrency: load.latency_concurrency,
        jobs: ms.len(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: ms[ms.len() - 1],
    })
}

pub(super) type Started = (
    Arc<crate::runner::Counters>,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
);

/// A worker in this process (the real runner, Redis source and journal) on `setup`'s stream,
/// with the built-in handlers and `handlers` registered over them.
pub(super) async fn start_worker(
    setup: &Setup,
    concurrency: usize,
    durability: Durability,
    handlers: Vec<(&str, Arc<dyn crate::handlers::Handler>)>,
) -> anyhow::Result<Started> {
    let mut cfg = RedisConfig::new(setup.url.clone(), "bench-worker");
    cfg.streams = vec![setup.stream.clone()];
    cfg.group = "bench".into();
    let source: Arc<dyn JobSource> = Arc::new(RedisSource::connect(cfg).await?);
    run_worker(source, &setup.dir, concurrency, durability, handlers).await
}

/// Runs the real runner with a journal in `dir` on `source`, with the built-in handlers and
/// `handlers` registered over them.
pub(super) async fn run_worker(
    source: Arc<dyn JobSource>,
    dir: &std::path::Path,
    concurrency: usize,
    durability: Durability,
    handlers: Vec<(&str, Arc<dyn crate::handlers::Handler>)>,
) -> anyhow::Result<Started> {
    let (journal, _) = Journal::open(
        dir,
        JournalOptions {
            durability,
            recover: true,
        },
    )?;
    let mut registry = Registry::builtin(ShellPolicy::default());
    for (name, handler) in handlers {
        registry.register(name, handler);
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
    println!(
        "no-op jobs through Redis Streams, one worker process ({})",
        report.redis
    );
    print_figures(&report.throughput, &report.latency);
    Ok(())
}

/// The throughput table, the cost of durability and the latency line.
pub(super) fn print_figures(throughput: &[Throughput], latency: &Latency) {
    let rows: Vec<Vec<String>> = throughput
        .iter()
        .map(|t| {
            vec![
                t.concurrency.to_string(),
                if t.durable { "durable" } else { "buffered" }.into(),
                t.jobs.to_string(),
                format!("{:.2}", t.seconds),
                format!("{:.0}", t.jobs_per_sec),
            ]
        })
        .collect();
    crate::cli::table(
        &["CONCURRENCY", "JOURNAL", "JOBS", "SECONDS", "JOBS/S"],
        &rows,
    );
    let max = throughput.iter().map(|t| t.concurrency).max().unwrap_or(0);
    let at = |durable: bool| {
        throughput
            .iter()
            .find(|t| t.concurrency == max && t.durable == durable)
            .map(|t| t.jobs_per_sec)
    };
    if let (Some(on), Some(off)) = (at(true), at(false)) {
        println!(
            "journal durability costs {:.0}% of throughput at concurrency {max}",
            100.0 * (1.0 - on / off).max(0.0)
        );
    }
    let l = latency;
    println!(
        "enqueue → handler start at {} jobs/s (concurrency {}, {} jobs): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        l.rate, l.concurrency, l.jobs, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
}
