//! `citadel bench nats`: no-op jobs through NATS JetStream into one worker (this process, the
//! real runner, source and journal), measured exactly like `citadel bench redis` (whose run
//! helpers it shares): N jobs are published first, then drained at each concurrency, with the
//! journal durable and, for comparison only, buffered; then jobs are published at a fixed rate
//! and the time from just before each publish to its handler's start is recorded. Each run uses
//! its own stream and subject. Uses `--nats-url`, or starts a throwaway local `nats-server -js`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use citadel_journal::Durability;
use citadel_transports::nats::{LocalNats, NatsProducer};
use citadel_transports::{JobSource, NatsConfig, NatsSource};
use clap::Args;
use serde::Serialize;
use serde_json::json;

use super::redis::{
    drain, finish_latency, plan, print_figures, run_worker, Latency, Load, Throughput,
};
use super::TimedNoop;

#[derive(Debug, Args)]
pub struct NatsBench {
    /// NATS to use (default: start a local nats-server -js on a free port).
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, Serialize)]
struct Report {
    nats: String,
    throughput: Vec<Throughput>,
    latency: Latency,
}

/// One run's stream, subject and journal directory.
struct Setup {
    cfg: NatsConfig,
    dir: std::path::PathBuf,
}

impl Setup {
    fn new(url: &str, tmp: &std::path::Path, run_no: usize) -> Self {
        let mut cfg = NatsConfig::new(url, "bench-worker");
        let tag = format!("b{}x{run_no}", std::process::id());
        cfg.stream = format!("BENCH_{tag}");
        cfg.stream_subjects = vec![format!("bench.{tag}.>")];
        cfg.subjects = vec![format!("bench.{tag}.jobs")];
        cfg.consumer = "bench".into();
        Self {
            cfg,
            dir: tmp.join(format!("run-{run_no}")),
        }
    }

    fn subject(&self) -> &str {
        &self.cfg.subjects[0]
    }

    /// Creates the stream and consumer (by connecting a source) and returns it.
    async fn source(&self) -> anyhow::Result<Arc<dyn JobSource>> {
        Ok(Arc::new(
            NatsSource::connect(self.cfg.clone())
                .await
                .context("connecting the nats source")?,
        ))
    }
}

pub async fn run(args: NatsBench) -> anyhow::Result<()> {
    let local = match &args.nats_url {
        Some(_) => None,
        None => Some(LocalNats::start().context("starting a local nats-server for the benchmark")?),
    };
    let url = args
        .nats_url
        .clone()
        .unwrap_or_else(|| local.as_ref().expect("started").url());
    let tmp = std::env::temp_dir().join(format!("citadel-bench-nats-{}", std::process::id()));
    let mut throughput = Vec::new();
    let mut run_no = 0;
    for (concurrency, durability) in plan(&args.load.concurrency) {
        run_no += 1;
        let jobs = args.load.jobs_at(concurrency);
        let setup = Setup::new(&url, &tmp, run_no);
        eprintln!(
            "[{run_no}] concurrency {concurrency}, journal {}: publishing {jobs} no-op jobs…",
            if durability == Durability::Durable {
                "durable"
            } else {
                "buffered"
            }
        );
        // The source creates the stream; its fetcher only pulls once the runner asks.
        let source = setup.source().await?;
        enqueue_all(&setup, jobs).await?;
        let started = run_worker(source, &setup.dir, concurrency, durability, vec![]).await?;
        throughput.push(drain(started, concurrency, durability, jobs).await?);
        std::fs::remove_dir_all(&setup.dir).ok();
    }

    run_no += 1;
    eprintln!(
        "[{run_no}] dispatch latency: {} jobs/s for {:?} at concurrency {}…",
        args.load.rate, args.load.latency_for, args.load.latency_concurrency
    );
    let setup = Setup::new(&url, &tmp, run_no);
    let timer = Arc::new(TimedNoop::default());
    let source = setup.source().await?;
    let started = run_worker(
        source,
        &setup.dir,
        args.load.latency_concurrency,
        Durability::Durable,
        vec![("noop", timer.clone())],
    )
    .await?;
    let enqueued = offer_load(&setup, args.load.rate, args.load.latency_for).await?;
    let latency = finish_latency(started, &timer, &enqueued, &args.load).await?;
    std::fs::remove_dir_all(&tmp).ok();
    let report = Report {
        nats: if local.is_some() {
            "local nats-server -js (started by the bench)".into()
        } else {
            url
        },
        throughput,
        latency,
    };
    if args.load.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "no-op jobs through NATS JetStream, one worker process ({})",
            report.nats
        );
        print_figures(&report.throughput, &report.latency);
    }
    Ok(())
}

fn body(id: &str) -> serde_json::Value {
    json!({"jobId": id, "type": "noop", "payload": {}})
}

/// Publishes `jobs` no-op jobs, 256 publishes in flight at a time.
async fn enqueue_all(setup: &Setup, jobs: u64) -> anyhow::Result<()> {
    let producer = NatsProducer::connect(&setup.cfg).await?;
    let js = producer.jetstream();
    let mut i = 0;
    while i < jobs {
        let mut acks = Vec::with_capacity(256);
        for _ in 0..256.min(jobs - i) {
            let payload = body(&format!("b-{i}")).to_string();
            acks.push(
                js.publish(setup.subject().to_owned(), payload.into())
                    .await?,
            );
            i += 1;
        }
        for ack in acks {
            ack.await?;
        }
    }
    Ok(())
}

/// Publishes one job every 1/rate seconds for `length`; returns each job's publish instant.
async fn offer_load(
    setup: &Setup,
    rate: u64,
    length: Duration,
) -> anyhow::Result<Vec<(String, Instant)>> {
    let producer = NatsProducer::connect(&setup.cfg).await?;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let total = (rate as f64 * length.as_secs_f64()) as usize;
    let mut out = Vec::with_capacity(total);
    for i in 0..total {
        tick.tick().await;
        let id = format!("l-{i}");
        let at = Instant::now();
        producer.enqueue(setup.subject(), &body(&id)).await?;
        out.push((id, at));
    }
    Ok(out)
}
