//! `citadel bench redis`: jobs through Redis Streams (docs/wire-format.md#job-entries entries, one stream per run, the
//! consumer group `bench`), against `--redis-url` or a throwaway local redis-server.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use citadel_harness::redis::LocalRedis;
use citadel_transports::redis::RedisProducer;
use citadel_transports::JobEntry;
use citadel_transports::{JobSource, RedisConfig, RedisSource};
use clap::Args;
use indicatif::ProgressBar;

use super::super::{BenchJob, Defaults, Lane, Load, Target};

#[derive(Debug, Args)]
pub struct RedisBench {
    /// Redis to use (default: start a local redis-server on a free port).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    #[command(flatten)]
    load: Load,
}

pub async fn run(args: RedisBench) -> anyhow::Result<()> {
    let (local, url) = redis_or_local(args.redis_url.as_deref()).await?;
    let target = RedisTarget {
        described: match &local {
            Some(_) => "Redis Streams (a local redis-server started by the bench)".into(),
            None => format!("Redis Streams ({})", crate::format::redact(&url)),
        },
        url,
    };
    let defaults = Defaults {
        jobs: 20_000,
        rate: 1000,
    };
    super::super::run(&target, &args.load, defaults, &super::work_dir("redis")).await
}

struct RedisTarget {
    url: String,
    described: String,
}

#[async_trait]
impl Target for RedisTarget {
    fn describe(&self) -> String {
        self.described.clone()
    }

    async fn lane(&self, run_no: usize) -> anyhow::Result<Box<dyn Lane>> {
        let conn = connection(&self.url).await?;
        Ok(Box::new(RedisLane {
            url: self.url.clone(),
            stream: format!("bench:{}:{run_no}", std::process::id()),
            producer: RedisProducer::new(conn.clone()),
            conn,
        }))
    }
}

struct RedisLane {
    url: String,
    stream: String,
    conn: redis::aio::MultiplexedConnection,
    producer: RedisProducer,
}

fn entry(job: &BenchJob) -> JobEntry<'_> {
    JobEntry::new(&job.id, job.kind, &job.payload)
}

#[async_trait]
impl Lane for RedisLane {
    async fn source(&self) -> anyhow::Result<Arc<dyn JobSource>> {
        Ok(Arc::new(redis_source(&self.url, &self.stream).await?))
    }

    async fn fill(&self, jobs: &[BenchJob], progress: &ProgressBar) -> anyhow::Result<()> {
        for chunk in jobs.chunks(500) {
            let entries: Vec<_> = chunk.iter().map(entry).collect();
            self.producer.enqueue_all(&self.stream, &entries).await?;
            progress.inc(chunk.len() as u64);
        }
        Ok(())
    }

    async fn enqueue(&self, job: &BenchJob) -> anyhow::Result<()> {
        self.producer.enqueue(&self.stream, &entry(job)).await?;
        Ok(())
    }

    /// Deletes the run's stream (the jobs' events and status hashes expire on their own).
    async fn clean_up(&self) {
        if let Err(e) = redis::cmd("DEL")
            .arg(&self.stream)
            .query_async::<()>(&mut self.conn.clone())
            .await
        {
            tracing::warn!(stream = %self.stream, error = %e, "could not delete the bench stream");
        }
    }
}

/// The bench worker's source on `stream` (consumer group `bench`).
pub(crate) async fn redis_source(url: &str, stream: &str) -> anyhow::Result<RedisSource> {
    let mut cfg = RedisConfig::new(url.to_string(), "bench-worker");
    cfg.streams = vec![stream.to_string()];
    cfg.group = "bench".into();
    RedisSource::connect(cfg)
        .await
        .context("connecting the bench worker to Redis")
}

/// The Redis at `url`, or a throwaway local redis-server (kept alive by the returned handle).
pub(crate) async fn redis_or_local(
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

pub(crate) async fn connection(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("connecting to {}", crate::format::redact(url)))
}
