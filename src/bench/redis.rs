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
    /// Concurrency levels to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Jobs per throughput run (a quarter of it at concurrency 1).
    #[arg(long, default_value_t = 20_000)]
    jobs: u64,
    /// Offered load of the latency run, jobs per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Length of the latency run.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    latency_for: Duration,
    /// Worker concurrency during the latency run.
    #[arg(long, default_value_t = 16)]
    latency_concurrency: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Throughput {
    concurrency: usize,
    durable: bool,
    jobs: u64,
    seconds: f64,
    jobs_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Latency {
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
    let mut plan: Vec<(usize, Durability)> = args
        .concurrency
        .iter()
        .map(|&c| (c, Durability::Durable))
        .collect();
    if let Some(&max) = args.concurrency.iter().max() {
        plan.push((max, Durability::Buffered));
    }
    for (concurrency, durability) in plan {
        run_no += 1;
        let jobs = if concurrency == 1 {
            args.jobs / 4
        } else {
            args.jobs
        };
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
        let (runner, shutdown, task) =
            start_worker(&setup, concurrency, durability, vec![]).await?;
        let started = Instant::now();
        let counters = runner;
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
        std::fs::remove_dir_all(&setup.dir).ok();
        throughput.push(Throughput {
            concurrency,
            durable: durability == Durability::Durable,
            jobs,
            seconds,
            jobs_per_sec: jobs as f64 / seconds,
        });
    }

    run_no += 1;
    eprintln!(
        "[{run_no}] dispatch latency: {} jobs/s for {:?} at concurrency {}…",
        args.rate, args.latency_for, args.latency_concurrency
    );
    let setup = Setup {
        url: url.clone(),
        stream: format!("bench:{}:{run_no}", std::process::id()),
        dir: tmp.join(format!("run-{run_no}")),
    };
    let timer = Arc::new(TimedNoop::default());
    let (counters, shutdown, task) = start_worker(
        &setup,
        args.latency_concurrency,
        Durability::Durable,
        vec![("noop", timer.clone())],
    )
    .await?;
    let enqueued = offer_load(&setup, args.rate, args.latency_for).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while counters.succeeded.load(Ordering::Relaxed) < enqueued.len() as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    task.await??;
    std::fs::remove_dir_all(&tmp).ok();
    let ms = timer.latencies_ms(&enqueued);
    anyhow::ensure!(
        ms.len() == enqueued.len(),
        "{} of {} latency jobs ran",
        ms.len(),
        enqueued.len()
    );
    let pct = |p: f64| super::percentile(&ms, p);
    let latency = Latency {
        rate: args.rate,
        concurrency: args.latency_concurrency,
        jobs: ms.len(),
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: ms[ms.len() - 1],
    };
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
        args.json,
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
    let (journal, _) = Journal::open(
        &setup.dir,
        JournalOptions {
            durability,
            recover: true,
        },
    )?;
    let mut cfg = RedisConfig::new(setup.url.clone(), "bench-worker");
    cfg.streams = vec![setup.stream.clone()];
    cfg.group = "bench".into();
    let source: Arc<dyn JobSource> = Arc::new(RedisSource::connect(cfg).await?);
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
    let rows: Vec<Vec<String>> = report
        .throughput
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
    let max = report
        .throughput
        .iter()
        .map(|t| t.concurrency)
        .max()
        .unwrap_or(0);
    let at = |durable: bool| {
        report
            .throughput
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
    let l = &report.latency;
    println!(
        "enqueue → handler start at {} jobs/s (concurrency {}, {} jobs): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        l.rate, l.concurrency, l.jobs, l.p50_ms, l.p90_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    Ok(())
}
