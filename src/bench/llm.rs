//! `citadel bench llm`: the token relay, end to end through Redis. A stand-in engine
//! ([`super::engine`], the real OpenAI SSE framing over loopback HTTP) writes its send time into
//! every token; the real runner, Redis source, journal and `llm_inference` handler of this
//! process relay each token as a `chunk` event; a Pub/Sub subscriber on `stream:v1:{jobId}`
//! takes the receive time. Reports the added latency per token (receive − send, one clock) at a
//! fixed token rate, the most tokens/s of one stream, and of many concurrent streams; and checks
//! on the way that every stream arrived whole and in order. Asserts no timing.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use citadel_harness::engine::{epoch_nanos, EngineScript, FakeEngine};
use citadel_journal::Durability;
use citadel_transports::redis::RedisProducer;
use citadel_transports::JobEntry;
use clap::Args;
use futures_util::StreamExt as _;
use serde::Serialize;
use serde_json::Value;

use super::jobs::{connection, redis_or_local, redis_source, Worker};
use crate::handlers::{LlmConfig, LlmHandler};

#[derive(Debug, Args)]
pub struct LlmBench {
    /// Redis to use (default: start a local redis-server on a free port).
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// Token rate of the latency run, tokens/s per stream.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Tokens per stream in the latency run.
    #[arg(long, default_value_t = 2000)]
    latency_tokens: usize,
    /// Concurrent streams during the latency run.
    #[arg(long, default_value_t = 1)]
    latency_streams: usize,
    /// Tokens of the single-stream throughput run (sent as fast as the relay takes them).
    #[arg(long, default_value_t = 50_000)]
    tokens: usize,
    /// Concurrent streams of the many-stream throughput run.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Tokens per stream in the many-stream run.
    #[arg(long, default_value_t = 2000)]
    stream_tokens: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct RunReport {
    run: String,
    streams: usize,
    tokens: u64,
    seconds: f64,
    tokens_per_sec: f64,
    /// Engine send → subscriber receive, microseconds.
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// Chunks whose index was not the next one of their stream (lost, duplicated, reordered).
    out_of_order: u64,
}

/// What the subscriber saw during one run.
#[derive(Debug, Default)]
struct Seen {
    latencies_us: Vec<f64>,
    chunks: u64,
    ends: u64,
    failures: Vec<String>,
    next_index: HashMap<String, u64>,
    out_of_order: u64,
}

impl Seen {
    fn take(&mut self, payload: &str, received_ns: u128) {
        let Ok(ev) = serde_json::from_str::<Value>(payload) else {
            return;
        };
        let job = ev["jobId"].as_str().unwrap_or("").to_string();
        match ev["type"].as_str() {
            Some("chunk") => {
                let content = ev["data"]["content"].as_str().unwrap_or("");
                if let Some(sent) = content
                    .strip_suffix('|')
                    .and_then(|s| s.parse::<u128>().ok())
                {
                    self.latencies_us
                        .push(received_ns.saturating_sub(sent) as f64 / 1000.0);
                }
                let index = ev["data"]["index"].as_u64().unwrap_or(u64::MAX);
                let next = self.next_index.entry(job).or_insert(0);
                if index != *next {
                    self.out_of_order += 1;
                }
                *next = index + 1;
                self.chunks += 1;
            }
            Some("end") => self.ends += 1,
            Some("error" | "cancelled") => self.failures.push(ev["data"].to_string()),
            _ => {}
        }
    }
}

/// The baseline: the same chunk events, timestamped and published by this process straight to
/// Redis at the same rate, so the table shows what Redis Pub/Sub alone costs on this machine.
async fn publish_directly(
    mut c: redis::aio::MultiplexedConnection,
    tokens: usize,
    interval: Duration,
) -> anyhow::Result<()> {
    let start = tokio::time::Instant::now();
    let channel = "stream:v1:bench-llm-baseline";
    for i in 0..tokens {
        tokio::time::sleep_until(start + interval * i as u32).await;
        let ev = serde_json::json!({"type": "chunk", "jobId": "baseline",
            "data": {"content": format!("{}|", epoch_nanos()), "index": i}});
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(ev.to_string())
            .query_async::<()>(&mut c)
            .await?;
    }
    let end = serde_json::json!({"type": "end", "jobId": "baseline", "data": {}});
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(end.to_string())
        .query_async::<()>(&mut c)
        .await?;
    Ok(())
}

pub async fn run(args: LlmBench) -> anyhow::Result<()> {
    let (_local, url) = redis_or_local(args.redis_url.as_deref()).await?;
    let engine = FakeEngine::start(EngineScript::default())
        .await
        .context("starting the stand-in engine")?;
    let tmp = std::env::temp_dir().join(format!("citadel-bench-llm-{}", std::process::id()));
    let stream = format!("bench:llm:{}", std::process::id());
    let worker = start_worker(&args, &engine, &url, &stream, &tmp).await?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = listen(&url, seen.clone()).await?;
    let bench = Bench {
        engine: &engine,
        producer: RedisProducer::new(connection(&url).await?),
        url: &url,
        stream: &stream,
        seen: &seen,
    };
    let mut reports = Vec::new();
    for (run_no, run) in plan(&args).into_iter().enumerate() {
        reports.push(bench.measure(run_no, run).await?);
    }
    worker.stop().await?;
    listener.abort();
    std::fs::remove_dir_all(&tmp).ok();
    print_reports(&reports, args.json)
}

/// The real runner with the `llm_inference` handler on the stand-in engine, on `stream`.
async fn start_worker(
    args: &LlmBench,
    engine: &FakeEngine,
    url: &str,
    stream: &str,
    tmp: &Path,
) -> anyhow::Result<Worker> {
    let mut llm = LlmConfig::default();
    llm.set_engine(&format!("vllm={}", engine.url()))
        .map_err(anyhow::Error::msg)?;
    let concurrency = args.streams.max(args.latency_streams).max(1);
    Worker::start(
        Arc::new(redis_source(url, stream).await?),
        &tmp.join("journal"),
        concurrency,
        Durability::Durable,
        vec![("llm_inference", Arc::new(LlmHandler::new(llm)))],
    )
    .await
}

/// The subscriber: every event on the bench's stream channels goes into `seen`, with the time
/// it arrived.
async fn listen(url: &str, seen: Arc<Mutex<Seen>>) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut pubsub = redis::Client::open(url)?.get_async_pubsub().await?;
    pubsub.psubscribe("stream:v1:bench-llm-*").await?;
    Ok(tokio::spawn(async move {
        let mut messages = pubsub.on_message();
        while let Some(msg) = messages.next().await {
            let at = epoch_nanos();
            if let Ok(payload) = msg.get_payload::<String>() {
                seen.lock().expect("poisoned").take(&payload, at);
            }
        }
    }))
}

/// One run of the plan.
struct Run {
    label: String,
    streams: usize,
    /// Tokens per stream.
    tokens: usize,
    /// Between two tokens of a stream (zero: flat out).
    interval: Duration,
    /// Through citadel, or Redis alone (the baseline).
    relayed: bool,
}

/// The runs, in order: the baseline, the latency run, one stream and many streams flat out.
fn plan(args: &LlmBench) -> [Run; 4] {
    let latency_interval = Duration::from_secs_f64(1.0 / args.rate.max(1) as f64);
    [
        Run {
            label: format!("baseline: Redis PUBLISH alone at {} msgs/s", args.rate),
            streams: 1,
            tokens: args.latency_tokens,
            interval: latency_interval,
            relayed: false,
        },
        Run {
            label: format!("latency at {} tokens/s", args.rate),
            streams: args.latency_streams,
            tokens: args.latency_tokens,
            interval: latency_interval,
            relayed: true,
        },
        Run {
            label: "one stream, flat out".to_string(),
            streams: 1,
            tokens: args.tokens,
            interval: Duration::ZERO,
            relayed: true,
        },
        Run {
            label: format!("{} streams, flat out", args.streams),
            streams: args.streams,
            tokens: args.stream_tokens,
            interval: Duration::ZERO,
            relayed: true,
        },
    ]
}

/// What the runs share: the engine, the producer, the stream and what the subscriber saw.
struct Bench<'a> {
    engine: &'a FakeEngine,
    producer: RedisProducer,
    url: &'a str,
    stream: &'a str,
    seen: &'a Mutex<Seen>,
}

impl Bench<'_> {
    /// Runs `run` to its last `end` event and reports it; fails when a stream failed, stalled
    /// or arrived incomplete.
    async fn measure(&self, run_no: usize, run: Run) -> anyhow::Result<RunReport> {
        let Run {
            label,
            streams,
            tokens,
            interval,
            relayed,
        } = run;
        eprintln!("[{}] {label}: {streams} × {tokens} tokens…", run_no + 1);
        self.engine.script(|s| {
            s.timestamp_tokens = Some(tokens);
            s.token_interval = interval;
        });
        *self.seen.lock().expect("poisoned") = Seen::default();
        let started = Instant::now();
        if relayed {
            self.enqueue(run_no, streams, tokens).await?;
        } else {
            tokio::spawn(publish_directly(
                connection(self.url).await?,
                tokens,
                interval,
            ));
        }
        self.wait_for_ends(streams, started).await?;
        let seconds = started.elapsed().as_secs_f64();
        let mut s = std::mem::take(&mut *self.seen.lock().expect("poisoned"));
        anyhow::ensure!(
            s.chunks == (streams * tokens) as u64,
            "{} of {} tokens arrived",
            s.chunks,
            streams * tokens
        );
        s.latencies_us.sort_by(f64::total_cmp);
        let pct = |p: f64| super::percentile(&s.latencies_us, p);
        Ok(RunReport {
            run: label,
            streams,
            tokens: s.chunks,
            seconds,
            tokens_per_sec: s.chunks as f64 / seconds,
            p50_us: pct(0.5),
            p99_us: pct(0.99),
            max_us: s.latencies_us.last().copied().unwrap_or(0.0),
            out_of_order: s.out_of_order,
        })
    }

    /// One `llm_inference` job per stream, each asking for `tokens` tokens.
    async fn enqueue(&self, run_no: usize, streams: usize, tokens: usize) -> anyhow::Result<()> {
        for i in 0..streams {
            let payload =
                serde_json::json!({"prompt": "bench", "max_tokens": tokens, "backend": "vllm"});
            let id = format!("bench-llm-{run_no}-{i}");
            self.producer
                .enqueue(self.stream, &JobEntry::new(&id, "llm_inference", &payload))
                .await?;
        }
        Ok(())
    }

    /// Waits until `streams` streams have ended; fails at the first failed stream, or after
    /// ten minutes.
    async fn wait_for_ends(&self, streams: usize, started: Instant) -> anyhow::Result<()> {
        loop {
            {
                let s = self.seen.lock().expect("poisoned");
                anyhow::ensure!(s.failures.is_empty(), "a stream failed: {:?}", s.failures);
                if s.ends as usize >= streams {
                    return Ok(());
                }
            }
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(600),
                "the relay stalled"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The reports as JSON, or as a table between a heading and a note on what latency means.
fn print_reports(reports: &[RunReport], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(&reports)?);
        return Ok(());
    }
    println!("llm token relay: stand-in engine (OpenAI SSE over loopback HTTP) → citadel → Redis Pub/Sub subscriber");
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.run.clone(),
                r.tokens.to_string(),
                format!("{:.2}", r.seconds),
                format!("{:.0}", r.tokens_per_sec),
                format!("{:.0}", r.p50_us),
                format!("{:.0}", r.p99_us),
                format!("{:.0}", r.max_us),
                r.out_of_order.to_string(),
            ]
        })
        .collect();
    crate::format::table(
        &[
            "RUN",
            "TOKENS",
            "SECONDS",
            "TOKENS/S",
            "P50 µs",
            "P99 µs",
            "MAX µs",
            "OUT OF ORDER",
        ],
        &rows,
    );
    println!("latency is engine send → subscriber receive per token; under the flat-out runs it includes queueing");
    Ok(())
}
