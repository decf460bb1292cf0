//! `citadel bench journal`: what durability costs. Writers append the four events of a job's
//! life (received, started, succeeded, acked) to a fresh journal in a temporary folder (or
//! `--dir`), durably and then with durability off; then a journal of `--replay-events` events is
//! reopened, which replays and folds every event.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use citadel_journal::{Durability, EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};
use clap::Args;
use serde::Serialize;

#[derive(Debug, Args)]
pub struct JournalBench {
    /// Events appended per concurrent-writer run.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events appended in the single-writer run (each waits for its own flush: keep it small).
    #[arg(long, default_value_t = 4_000)]
    single_writer_events: u64,
    /// Concurrent writer counts to measure, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    writers: Vec<u64>,
    /// Events in the journal that is reopened to measure replay.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    /// Where to put the journals (default: a temporary folder, removed afterwards). Put it on the
    /// disk your worker's data directory is on.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct AppendRun {
    writers: u64,
    durable: bool,
    events: u64,
    seconds: f64,
    appends_per_sec: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    appends: Vec<AppendRun>,
    replay_events: u64,
    replay_seconds: f64,
    replay_events_per_sec: f64,
}

pub async fn run(args: JournalBench) -> anyhow::Result<()> {
    let tmp = tempfile_dir(args.dir.as_deref())?;
    let mut appends = Vec::new();
    let mut n = 0;
    for &writers in &args.writers {
        for durability in [Durability::Durable, Durability::Buffered] {
            n += 1;
            let events = if writers == 1 && durability == Durability::Durable {
                args.single_writer_events
            } else {
                args.events
            };
            eprintln!(
                "[{n}/{}] {writers} writer(s), durability {}: {events} appends…",
                args.writers.len() * 2 + 1,
                if durability == Durability::Durable {
                    "on"
                } else {
                    "off"
                }
            );
            let dir = tmp.join(format!("append-{n}"));
            let run = append_run(&dir, writers, events, durability).await?;
            std::fs::remove_dir_all(&dir).ok();
            appends.push(run);
        }
    }
    eprintln!(
        "[{}/{}] replay of {} events: writing…",
        n + 1,
        n + 1,
        args.replay_events
    );
    let dir = tmp.join("replay");
    let written = append_run(&dir, 64, args.replay_events, Durability::Buffered)
        .await?
        .events;
    eprintln!(
        "[{}/{}] replay of {} events: reopening…",
        n + 1,
        n + 1,
        args.replay_events
    );
    let started = Instant::now();
    let (journal, report) = Journal::open(&dir, JournalOptions::inspect())?;
    let replay_seconds = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.events == written,
        "replayed {} of {written} events",
        report.events
    );
    drop(journal);
    std::fs::remove_dir_all(&tmp).ok();
    let report = Report {
        appends,
        replay_events: written,
        replay_seconds,
        replay_events_per_sec: written as f64 / replay_seconds,
    };
    print(&report, args.json)
}

fn tempfile_dir(base: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    let base = base.map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("citadel-bench-journal-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

async fn append_run(
    dir: &std::path::Path,
    writers: u64,
    events: u64,
    durability: Durability,
) -> anyhow::Result<AppendRun> {
    let options = JournalOptions {
        durability,
        recover: false,
    };
    let (journal, _) = Journal::open(dir, options)?;
    let jobs_per_writer = (events / 4).div_ceil(writers);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let journal = journal.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..jobs_per_writer {
                let id = JobId::new(format!("bench-{w}-{i}")).expect("valid id");
                let job = Job::first_delivery(id.clone(), "noop", serde_json::json!({}), "bench");
                for event in [
                    EventKind::Received { job },
                    EventKind::Started { attempt: 1 },
                    EventKind::Succeeded {
                        result: serde_json::json!({}),
                    },
                    EventKind::Acked,
                ] {
                    journal
                        .append(NewEvent::new(id.clone(), "bench", event))
                        .await?;
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let seconds = started
        .elapsed()
        .as_secs_f64()
        .max(Duration::from_micros(1).as_secs_f64());
    let written = jobs_per_writer * writers * 4;
    Ok(AppendRun {
        writers,
        durable: durability == Durability::Durable,
        events: written,
        seconds,
        appends_per_sec: written as f64 / seconds,
    })
}

fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("journal appends (each append = one lifecycle event; durable = on disk when append returns)");
    let rows: Vec<Vec<String>> = report
        .appends
        .iter()
        .map(|r| {
            vec![
                r.writers.to_string(),
                if r.durable { "on" } else { "off" }.to_string(),
                r.events.to_string(),
                format!("{:.2}", r.seconds),
                format!("{:.0}", r.appends_per_sec),
            ]
        })
        .collect();
    crate::format::table(
        &["WRITERS", "DURABLE", "EVENTS", "SECONDS", "APPENDS/S"],
        &rows,
    );
    for pair in report.appends.chunks(2) {
        if let [on, off] = pair {
            println!(
                "{} writer(s): durability costs {:.0}% of the buffered rate",
                on.writers,
                100.0 * (1.0 - on.appends_per_sec / off.appends_per_sec).max(0.0)
            );
        }
    }
    println!(
        "replay: {} events reopened and folded in {:.2} s ({:.0} events/s)",
        report.replay_events, report.replay_seconds, report.replay_events_per_sec
    );
    Ok(())
}
