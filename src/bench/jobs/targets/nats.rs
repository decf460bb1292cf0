//! `citadel bench nats`: jobs through NATS JetStream (a stream, subject and durable consumer of
//! its own per run), against `--nats-url` or a throwaway local `nats-server -js`.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use citadel_harness::nats::LocalNats;
use citadel_transports::nats::NatsProducer;
use citadel_transports::{JobEntry, JobSource, NatsConfig, TransportConfig};
use clap::Args;
use indicatif::ProgressBar;

use super::super::{BenchJob, Defaults, Lane, Load, Target};

#[derive(Debug, Args)]
pub struct NatsBench {
    /// NATS to use (default: start a local nats-server -js on a free port).
    #[arg(long, value_name = "URL")]
    nats_url: Option<String>,
    #[command(flatten)]
    load: Load,
}

pub async fn run(args: NatsBench) -> anyhow::Result<()> {
    let local = match &args.nats_url {
        Some(_) => None,
        None => Some(LocalNats::start().context("starting a local nats-server for the benchmark")?),
    };
    let (url, described) = match (&args.nats_url, &local) {
        (Some(u), _) => (
            u.clone(),
            format!("NATS JetStream ({})", crate::format::redact(u)),
        ),
        (None, Some(l)) => (
            l.url(),
            "NATS JetStream (a local nats-server -js started by the bench)".into(),
        ),
        (None, None) => unreachable!("a local server is started when no URL is given"),
    };
    let defaults = Defaults {
        jobs: 20_000,
        rate: 1000,
    };
    let target = NatsTarget { url, described };
    super::super::run(&target, &args.load, defaults, &super::work_dir("nats")).await
}

struct NatsTarget {
    url: String,
    described: String,
}

#[async_trait]
impl Target for NatsTarget {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn lane(&self, run_no: usize) -> anyhow::Result<Box<dyn Lane>> {
        let mut cfg = NatsConfig::new(&self.url, "bench-worker");
        let tag = format!("b{}x{run_no}", std::process::id());
        cfg.stream = format!("BENCH_{tag}");
        cfg.stream_subjects = vec![format!("bench.{tag}.>")];
        cfg.subjects = vec![format!("bench.{tag}.jobs")];
        cfg.consumer = "bench".into();
        Ok(Box::new(NatsLane {
            cfg,
            producer: tokio::sync::OnceCell::new(),
        }))
    }
}

struct NatsLane {
    cfg: NatsConfig,
    /// Connected on first use, after the source has created the stream.
    producer: tokio::sync::OnceCell<NatsProducer>,
}

impl NatsLane {
    fn subject(&self) -> &str {
        &self.cfg.subjects[0]
    }

    async fn producer(&self) -> anyhow::Result<&NatsProducer> {
        self.producer
            .get_or_try_init(|| NatsProducer::connect(&self.cfg))
            .await
            .context("connecting the bench producer to NATS")
    }
}

fn body(job: &BenchJob) -> serde_json::Value {
    JobEntry::new(&job.id, job.kind, &job.payload).to_json()
}

#[async_trait]
impl Lane for NatsLane {
    /// Creates the stream and consumer (the source's fetcher pulls only once the runner asks),
    /// then connects the producer, so no timed enqueue pays for connecting.
    async fn source(&self) -> anyhow::Result<Arc<dyn JobSource>> {
        let source = TransportConfig::Nats(self.cfg.clone())
            .connect()
            .await
            .context("connecting the bench worker to NATS")?;
        self.producer().await?;
        Ok(source)
    }

    /// Publishes with 256 acknowledgements outstanding at a time.
    async fn fill(&self, jobs: &[BenchJob], progress: &ProgressBar) -> anyhow::Result<()> {
        let js = self.producer().await?.jetstream();
        for chunk in jobs.chunks(256) {
            let mut acks = Vec::with_capacity(chunk.len());
            for job in chunk {
                let payload = body(job).to_string();
                acks.push(
                    js.publish(self.subject().to_owned(), payload.into())
                        .await?,
                );
            }
            for ack in acks {
                ack.await?;
            }
            progress.inc(chunk.len() as u64);
        }
        Ok(())
    }

    async fn enqueue(&self, job: &BenchJob) -> anyhow::Result<()> {
        self.producer()
            .await?
            .enqueue(self.subject(), &body(job))
            .await?;
        Ok(())
    }
}
