//! The one job benchmark behind `citadel bench redis|nats|websocket|nexus`: the same runs and
//! the same report whatever the transport, which only supplies a [`Target`] (a fresh queue per
//! run, a way to enqueue, and the worker's source). A run enqueues its jobs first (not timed),
//! then starts one worker in this process — the real runner, source, journal and handlers — and
//! times the drain, with the process's CPU time and peak resident set; each concurrency runs with
//! the journal durable, and the highest once more with it buffered, which gives the journal's
//! share of the cost. The latency run offers a fixed load and records, per job, enqueue → handler
//! start and enqueue → done (the settlement returned: journaled, then acked). Repeats give the
//! median and the spread. It asserts no timing; it fails only when jobs do not complete.

mod probe;
pub(crate) mod targets;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use citadel_journal::{Durability, Journal, JournalOptions};
use citadel_transports::JobSource;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::handlers::{Handler, Registry, ShellPolicy};
use crate::runner::{Counters, Runner, RunnerConfig};
use probe::{Percentiles, TimedHandler, TimedSource};

pub(crate) use targets::redis::{connection, redis_or_local, redis_source};
pub use targets::{NatsBench, NexusBench, RedisBench, WebSocketBench};

/// How long a run may go without finishing before the bench gives up on it.
const STALL: Duration = Duration::from_secs(600);

#[derive(Debug, Args)]
pub struct Load {
    /// Worker concurrency levels of the throughput runs, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub concurrency: Vec<usize>,
    /// Jobs per throughput run (a quarter of it at concurrency 1) [default: 20000 for redis and
    /// nats, 2000 for nexus and websocket].
    #[arg(long)]
    pub jobs: Option<u64>,
    /// The journal settings to run: `both` (durable at every concurrency, then buffered at the
    /// highest, to show the journal's share of the cost), `durable` or `buffered`.
    #[arg(long, value_enum, default_value_t = JournalRuns::Both)]
    pub journal: JournalRuns,
    /// The job: `noop`, or `sleep:DURATION` (e.g. `sleep:10ms`, the built-in `sleep` handler).
    #[arg(long, default_value = "noop", value_parser = JobKind::parse)]
    pub job: JobKind,
    /// Runs of each throughput setting; the table shows the median and the spread.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    /// Skip the throughput runs: only the latency run.
    #[arg(long, conflicts_with = "repeat")]
    pub latency_only: bool,
    /// Offered load of the latency run, jobs/s [default: 1000 for redis and nats, 100 for nexus
    /// and websocket].
    #[arg(long)]
    pub rate: Option<u64>,
    /// Length of the latency run; `0s` skips it.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub latency_for: Duration,
    /// Worker concurrency during the latency run.
    #[arg(long, default_value_t = 16)]
    pub latency_concurrency: usize,
    /// Print the report as JSON on standard output (progress still goes to standard error).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JournalRuns {
    Both,
    Durable,
    Buffered,
}

/// What each benchmark job does.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    Noop,
    Sleep(Duration),
}

impl JobKind {
    fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "noop" => Ok(Self::Noop),
            Some(("sleep", d)) => humantime::parse_duration(d)
                .map(Self::Sleep)
                .map_err(|e| format!("sleep:{d}: {e}")),
            _ => Err(format!("unknown job `{s}`: use `noop` or `sleep:DURATION`")),
        }
    }

    /// The job type on the wire.
    fn name(&self) -> &'static str {
        match self {
            Self::Noop => "noop",
            Self::Sleep(_) => "sleep",
        }
    }

    fn payload(&self) -> Value {
        match self {
            Self::Noop => json!({}),
            Self::Sleep(d) => json!({"ms": d.as_millis().to_string()}),
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Noop => "no-op".into(),
            Self::Sleep(d) => format!("sleep {}", humantime::format_duration(*d)),
        }
    }
}

/// One job the bench enqueues.
#[derive(Debug, Clone)]
pub(crate) struct BenchJob {
    pub id: String,
    pub kind: &'static str,
    pub payload: Value,
}

/// A fresh queue for one run.
#[async_trait]
pub(crate) trait Lane: Send + Sync {
    /// The source a worker takes this lane's jobs from; made before anything is enqueued (some
    /// transports create the queue with it).
    async fn source(&self) -> anyhow::Result<Arc<dyn JobSource>>;
    /// Enqueues `jobs` as fast as the transport takes them, advancing `progress`.
    async fn fill(&self, jobs: &[BenchJob], progress: &ProgressBar) -> anyhow::Result<()>;
    /// Enqueues one job; returns once the transport accepted it.
    async fn enqueue(&self, job: &BenchJob) -> anyhow::Result<()>;
    /// Removes the run's queue once its jobs are done (best effort: a bench against a user's
    /// broker must not leave its jobs behind).
    async fn clean_up(&self) {}
}

/// A transport under test.
#[async_trait]
pub(crate) trait Target: Send + Sync {
    /// What is measured, for the report's title (`no-op jobs through …`).
    fn describe(&self) -> String;
    /// A lane of its own for run `run_no`.
    async fn lane(&self, run_no: usize) -> anyhow::Result<Box<dyn Lane>>;
}

/// The defaults that differ by transport.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub jobs: u64,
    pub rate: u64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Run {
    seconds: f64,
    /// From the worker's start to the first job done (its start-up, as the clock sees it).
    first_done_s: f64,
    jobs_per_sec: f64,
    cpu_seconds: f64,
    peak_rss_mb: f64,
}

#[derive(Debug, Serialize)]
pub(crate) struct Throughput {
    concurrency: usize,
    journal: &'static str,
    jobs: u64,
    /// The median run's figures (by jobs/s).
    jobs_per_sec: f64,
    jobs_per_sec_min: f64,
    jobs_per_sec_max: f64,
    seconds: f64,
    /// CPU time of the bench process (worker, plus an in-process control plane) per job.
    cpu_us_per_job: f64,
    peak_rss_mb: f64,
    runs: Vec<Run>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Latency {
    journal: &'static str,
    rate: u64,
    concurrency: usize,
    jobs: usize,
    /// Enqueue → handler start.
    start: Percentiles,
    /// Enqueue → done (the settlement returned: journaled, then acked).
    done: Percentiles,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    transport: String,
    job: String,
    throughput: Vec<Throughput>,
    /// 1 − durable/buffered jobs/s at the highest concurrency.
    journal_share: Option<f64>,
    latency: Option<Latency>,
}

/// Runs the whole benchmark against `target` and prints the report.
pub(crate) async fn run(
    target: &dyn Target,
    load: &Load,
    defaults: Defaults,
    work_dir: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(load.repeat >= 1, "--repeat must be at least 1");
    anyhow::ensure!(
        load.concurrency.iter().all(|&c| c >= 1),
        "every --concurrency must be at least 1"
    );
    let jobs = load.jobs.unwrap_or(defaults.jobs);
    let mut run_no = 0;
    let mut throughput = Vec::new();
    let plan = if load.latency_only {
        vec![]
    } else {
        plan(&load.concurrency, load.journal)
    };
    for (concurrency, durability) in plan {
        let jobs = if concurrency == 1 { jobs / 4 } else { jobs }.max(1);
        let mut runs = Vec::new();
        for repeat in 0..load.repeat {
            run_no += 1;
            let label = format!(
                "[{run_no}] c={concurrency} {}{}",
                journal_name(durability),
                if load.repeat > 1 {
                    format!(" #{}", repeat + 1)
                } else {
                    String::new()
                }
            );
            let dir = work_dir.join(format!("run-{run_no}"));
            let r = throughput_run(
                target,
                &load.job,
                run_no,
                &dir,
                concurrency,
                durability,
                jobs,
                &label,
            )
            .await?;
            std::fs::remove_dir_all(&dir).ok();
            runs.push(r);
        }
        throughput.push(summarize(concurrency, durability, jobs, runs));
    }
    anyhow::ensure!(
        !(load.latency_only && load.latency_for.is_zero()),
        "--latency-only with --latency-for 0s leaves nothing to measure"
    );
    let latency = if load.latency_for.is_zero() {
        None
    } else {
        run_no += 1;
        let dir = work_dir.join(format!("run-{run_no}"));
        let rate = load.rate.unwrap_or(defaults.rate).max(1);
        let l = latency_run(target, load, run_no, &dir, rate).await?;
        std::fs::remove_dir_all(&dir).ok();
        Some(l)
    };
    std::fs::remove_dir_all(work_dir).ok();
    let report = Report {
        transport: target.describe(),
        job: load.job.describe(),
        journal_share: journal_share(&throughput),
        throughput,
        latency,
    };
    if load.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&report);
    }
    Ok(())
}

/// Each concurrency with the journal durable, then (for `both`) the highest one buffered.
fn plan(concurrency: &[usize], journal: JournalRuns) -> Vec<(usize, Durability)> {
    let each = |d: Durability| concurrency.iter().map(move |&c| (c, d));
    match journal {
        JournalRuns::Durable => each(Durability::Durable).collect(),
        JournalRuns::Buffered => each(Durability::Buffered).collect(),
        JournalRuns::Both => {
            let mut plan: Vec<_> = each(Durability::Durable).collect();
            if let Some(&max) = concurrency.iter().max() {
                plan.push((max, Durability::Buffered));
            }
            plan
        }
    }
}

fn journal_name(d: Durability) -> &'static str {
    if d == Durability::Durable {
        "durable"
    } else {
        "buffered"
    }
}

fn jobs_of(kind: &JobKind, prefix: &str, n: u64) -> Vec<BenchJob> {
    (0..n)
        .map(|i| BenchJob {
            id: format!("{prefix}-{i}"),
            kind: kind.name(),
            payload: kind.payload(),
        })
        .collect()
}

fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix} {msg:10} [{bar:30}] {pos}/{len} {per_sec} {elapsed}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

#[allow(clippy::too_many_arguments)]
async fn throughput_run(
    target: &dyn Target,
    kind: &JobKind,
    run_no: usize,
    dir: &std::path::Path,
    concurrency: usize,
    durability: Durability,
    jobs: u64,
    label: &str,
) -> anyhow::Result<Run> {
    let lane = target.lane(run_no).await?;
    let (source, settled) = TimedSource::wrap(lane.source().await?);
    let progress = bar(jobs, label);
    progress.set_message("enqueue");
    lane.fill(
        &jobs_of(kind, &format!("t{}x{run_no}", std::process::id()), jobs),
        &progress,
    )
    .await?;
    progress.reset();
    progress.set_message("run");
    probe::reset_peak_rss();
    let cpu = probe::cpu_seconds();
    let worker = Worker::start(source, dir, concurrency, durability, vec![]).await?;
    let began = Instant::now();
    let mut first_done_s = None;
    loop {
        // Done = settled: the success journaled, then acked with the transport.
        let done = settled.len() as u64;
        if done > 0 && first_done_s.is_none() {
            first_done_s = Some(began.elapsed().as_secs_f64());
        }
        progress.set_position(done);
        if done >= jobs {
            break;
        }
        anyhow::ensure!(
            began.elapsed() < STALL,
            "{label}: the worker stalled at {done} of {jobs} jobs"
        );
        worker.check_failures(label)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seconds = began.elapsed().as_secs_f64();
    let cpu_seconds = probe::cpu_seconds() - cpu;
    let peak_rss_mb = probe::peak_rss_mb();
    progress.finish_and_clear();
    worker.stop().await?;
    lane.clean_up().await;
    let r = Run {
        seconds,
        first_done_s: first_done_s.unwrap_or(seconds),
        jobs_per_sec: jobs as f64 / seconds,
        cpu_seconds,
        peak_rss_mb,
    };
    eprintln!(
        "{label}: {jobs} jobs in {seconds:.2} s, {:.0} jobs/s, CPU {cpu_seconds:.2} s, peak RSS {peak_rss_mb:.1} MiB",
        r.jobs_per_sec
    );
    Ok(r)
}

fn summarize(
    concurrency: usize,
    durability: Durability,
    jobs: u64,
    mut runs: Vec<Run>,
) -> Throughput {
    runs.sort_by(|a, b| a.jobs_per_sec.total_cmp(&b.jobs_per_sec));
    // The lower median for an even count: never the faster of two.
    let median = &runs[(runs.len() - 1) / 2];
    Throughput {
        concurrency,
        journal: journal_name(durability),
        jobs,
        jobs_per_sec: median.jobs_per_sec,
        jobs_per_sec_min: runs[0].jobs_per_sec,
        jobs_per_sec_max: runs[runs.len() - 1].jobs_per_sec,
        seconds: median.seconds,
        cpu_us_per_job: median.cpu_seconds * 1e6 / jobs as f64,
        peak_rss_mb: median.peak_rss_mb,
        runs,
    }
}

fn journal_share(throughput: &[Throughput]) -> Option<f64> {
    let max = throughput.iter().map(|t| t.concurrency).max()?;
    let at = |journal: &str| {
        throughput
            .iter()
            .find(|t| t.concurrency == max && t.journal == journal)
            .map(|t| t.jobs_per_sec)
    };
    Some((1.0 - at("durable")? / at("buffered")?).max(0.0))
}

async fn latency_run(
    target: &dyn Target,
    load: &Load,
    run_no: usize,
    dir: &std::path::Path,
    rate: u64,
) -> anyhow::Result<Latency> {
    let total = ((rate as f64 * load.latency_for.as_secs_f64()) as usize).max(1);
    let label = format!("[{run_no}] latency at {rate} jobs/s");
    let lane = target.lane(run_no).await?;
    let (source, settled) = TimedSource::wrap(lane.source().await?);
    let inner = Registry::builtin(ShellPolicy::default())
        .get(load.job.name())
        .expect("the built-in handlers include the bench jobs");
    let timer = Arc::new(TimedHandler::new(inner));
    // The journal as asked: durable unless only `buffered` runs were asked for.
    let durability = match load.journal {
        JournalRuns::Buffered => Durability::Buffered,
        JournalRuns::Both | JournalRuns::Durable => Durability::Durable,
    };
    let worker = Worker::start(
        source,
        dir,
        load.latency_concurrency,
        durability,
        vec![(load.job.name(), timer.clone())],
    )
    .await?;
    // Let the worker reach its first fetch before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let progress = bar(total as u64, &label);
    progress.set_message("offer");
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut enqueued = Vec::with_capacity(total);
    for job in jobs_of(
        &load.job,
        &format!("l{}x{run_no}", std::process::id()),
        total as u64,
    ) {
        tick.tick().await;
        let at = Instant::now();
        lane.enqueue(&job).await?;
        enqueued.push((job.id, at));
        progress.inc(1);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker.counters.succeeded.load(Ordering::Relaxed) < total as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    progress.finish_and_clear();
    worker.stop().await?;
    lane.clean_up().await;
    let start = timer.started.since_ms(&enqueued);
    let done = settled.since_ms(&enqueued);
    anyhow::ensure!(
        start.len() == total && done.len() == total,
        "{label}: {} of {total} jobs started and {} were done within a minute",
        start.len(),
        done.len()
    );
    Ok(Latency {
        journal: journal_name(durability),
        rate,
        concurrency: load.latency_concurrency,
        jobs: total,
        start: Percentiles::of(&start),
        done: Percentiles::of(&done),
    })
}

fn print(report: &Report) {
    println!(
        "{} jobs through {}, one worker in this process",
        report.job, report.transport
    );
    let rows: Vec<Vec<String>> = report
        .throughput
        .iter()
        .map(|t| {
            let spread = if t.runs.len() > 1 {
                format!("{:.0}–{:.0}", t.jobs_per_sec_min, t.jobs_per_sec_max)
            } else {
                "-".into()
            };
            vec![
                t.concurrency.to_string(),
                t.journal.into(),
                t.jobs.to_string(),
                t.runs.len().to_string(),
                format!("{:.0}", t.jobs_per_sec),
                spread,
                format!("{:.0}", t.cpu_us_per_job),
                format!("{:.1}", t.peak_rss_mb),
            ]
        })
        .collect();
    crate::format::table(
        &[
            "CONCURRENCY",
            "JOURNAL",
            "JOBS",
            "RUNS",
            "JOBS/S",
            "SPREAD",
            "CPU µs/JOB",
            "PEAK RSS MiB",
        ],
        &rows,
    );
    if let Some(share) = report.journal_share {
        println!("the durable journal's share of the cost at the highest concurrency: {:.0}% of throughput", share * 100.0);
    }
    if let Some(l) = &report.latency {
        let line = |what: &str, p: &Percentiles| {
            println!(
                "  {what:<24} p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
                p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
            )
        };
        println!(
            "latency at {} jobs/s offered (concurrency {}, journal {}, {} jobs):",
            l.rate, l.concurrency, l.journal, l.jobs
        );
        line("enqueue → handler start", &l.start);
        line("enqueue → done (acked)", &l.done);
    }
}

/// A worker in this process: the real runner, with a journal in its own folder.
pub(crate) struct Worker {
    pub(crate) counters: Arc<Counters>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    /// Runs the runner on `source` with the built-in handlers and `handlers` registered over
    /// them.
    pub(crate) async fn start(
        source: Arc<dyn JobSource>,
        dir: &std::path::Path,
        concurrency: usize,
        durability: Durability,
        handlers: Vec<(&str, Arc<dyn Handler>)>,
    ) -> anyhow::Result<Self> {
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
        Ok(Self {
            counters,
            shutdown,
            task,
        })
    }

    /// Fails when a bench job failed: the figures would not mean what they say.
    fn check_failures(&self, label: &str) -> anyhow::Result<()> {
        let failed = self.counters.failed.load(Ordering::Relaxed)
            + self.counters.dead_lettered.load(Ordering::Relaxed);
        anyhow::ensure!(
            failed == 0,
            "{label}: {failed} bench jobs failed (see the log)"
        );
        Ok(())
    }

    /// Stops the runner (drain) and waits for it.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_parse_and_describe_themselves() {
        assert_eq!(JobKind::parse("noop"), Ok(JobKind::Noop));
        let sleep = JobKind::parse("sleep:10ms").unwrap();
        assert_eq!(sleep, JobKind::Sleep(Duration::from_millis(10)));
        assert_eq!(sleep.payload(), json!({"ms": "10"}));
        assert!(JobKind::parse("sleep:soon")
            .unwrap_err()
            .contains("sleep:soon"));
        assert!(JobKind::parse("shell").unwrap_err().contains("noop"));
    }

    #[test]
    fn the_plan_adds_one_buffered_run_at_the_highest_concurrency() {
        use Durability::{Buffered, Durable};
        assert_eq!(
            plan(&[1, 16, 64], JournalRuns::Both),
            vec![(1, Durable), (16, Durable), (64, Durable), (64, Buffered)]
        );
        assert_eq!(plan(&[64], JournalRuns::Buffered), vec![(64, Buffered)]);
    }

    #[test]
    fn repeats_report_the_median_and_the_spread() {
        let run = |r: f64| Run {
            seconds: 1000.0 / r,
            first_done_s: 0.001,
            jobs_per_sec: r,
            cpu_seconds: 1.0,
            peak_rss_mb: 10.0,
        };
        let t = summarize(
            64,
            Durability::Durable,
            1000,
            vec![run(300.0), run(100.0), run(200.0)],
        );
        assert_eq!(
            (t.jobs_per_sec, t.jobs_per_sec_min, t.jobs_per_sec_max),
            (200.0, 100.0, 300.0)
        );
        assert_eq!(t.cpu_us_per_job, 1000.0);
        let buffered = summarize(64, Durability::Buffered, 1000, vec![run(400.0)]);
        let share = journal_share(&[t, buffered]).unwrap();
        assert!((share - 0.5).abs() < 1e-9);
    }
}
