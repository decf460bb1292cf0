//! `citadel journal`: the debugging tool over the job journal (docs/journal.md). It opens the journal
//! directly when no worker holds it, and reads it through the worker's socket when one does, so it
//! works on a running node without stopping it and without the control plane. Every view is a
//! fold of the stored events ([`citadel_journal::replay`]); nothing here appends events.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_journal::remote::JournalAccess;
use citadel_journal::{
    format_ms, now_ms, replay, Damage, EventKind, JobEvent, JobState, Phase, RetentionPolicy, Until,
};
use citadel_transports::JobId;
use clap::{Args, Subcommand};

use crate::format::{self, table};

#[derive(Debug, Args)]
pub struct JournalArgs {
    /// The journal folder (default: DATA_DIR/journal).
    #[arg(long, global = true, env = "CITADEL_JOURNAL", value_name = "DIR")]
    journal: Option<PathBuf>,

    #[command(subcommand)]
    command: JournalCommand,
}

#[derive(Debug, Subcommand)]
enum JournalCommand {
    /// List jobs with their state, newest last.
    Ls {
        /// Only jobs in this state (repeatable): received, running, succeeded, failed, cancelled,
        /// timed_out, interrupted, acked, retried, dead_lettered, released, skipped; also
        /// `unsettled` for everything the worker still owes a settlement.
        #[arg(long, value_name = "STATE")]
        state: Vec<String>,
        /// Only jobs of this type (e.g. llm_inference).
        #[arg(long = "type", value_name = "TYPE")]
        job_type: Option<String>,
        /// Only jobs active since a duration ago (30m, 2h, 7d) or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Show at most this many (the newest).
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
        #[arg(long)]
        json: bool,
    },
    /// Show one job's timeline, with the time between events.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the last events, and with -f keep printing new ones as they are appended.
    Tail {
        /// How many past events to print first.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep following the journal (Ctrl-C to stop).
        #[arg(short = 'f', long)]
        follow: bool,
        #[arg(long)]
        json: bool,
    },
    /// Fold the events into each job's state as of a point in the past.
    Replay {
        /// Replay up to and including this sequence number.
        #[arg(long, value_name = "SEQ", conflicts_with = "at")]
        at_seq: Option<u64>,
        /// Replay up to this RFC 3339 time.
        #[arg(long, value_name = "TIME")]
        at: Option<String>,
        /// Only this job (prints its full state).
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
        /// Re-run the job (with --job) on this machine from its recorded delivery: the handler
        /// only, printing its chunks and result. Nothing is journaled, published or settled.
        /// `shell_command` jobs run only with --enable-shell.
        #[arg(long, requires = "job")]
        execute: bool,
        /// With --execute: allow a recorded `shell_command` to run.
        #[arg(long, requires = "execute")]
        enable_shell: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write events as JSON lines (one event per line) to stdout.
    Export {
        /// Only events from this sequence number on.
        #[arg(long, value_name = "SEQ", default_value_t = 0)]
        from_seq: u64,
        /// Only events since a duration ago or an RFC 3339 time.
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only this job's events.
        #[arg(long, value_name = "JOB")]
        job: Option<String>,
    },
    /// Counts per state and type, size on disk, damaged entries.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Remove settled jobs by age and/or size (never a job still owed a settlement).
    Compact {
        /// Remove settled jobs whose last event is older than this (e.g. 7d).
        #[arg(long, value_name = "AGE")]
        max_age: Option<String>,
        /// Then remove the oldest settled jobs until the events take at most this (e.g. 1GiB).
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(args: JournalArgs, data_dir: &Path) -> anyhow::Result<()> {
    let dir = args
        .journal
        .unwrap_or_else(|| crate::paths::journal_dir(data_dir));
    if !dir.exists() {
        bail!(
            "no journal at {} (a worker creates it on first start; use --journal or --data-dir to point elsewhere)",
            dir.display()
        );
    }
    let open = || {
        JournalAccess::open(&dir)
            .with_context(|| format!("opening the journal at {}", dir.display()))
    };
    match args.command {
        JournalCommand::Ls {
            state,
            job_type,
            since,
            limit,
            json,
        } => {
            let (events, damaged) = load(&open()?, 0).await?;
            let since = since
                .map(|s| format::parse_since(&s, now_ms()))
                .transpose()?;
            for s in &state {
                if s != "unsettled" && !Phase::LABELS.contains(&s.as_str()) {
                    bail!(
                        "unknown state `{s}`; states: unsettled, {}",
                        Phase::LABELS.join(", ")
                    );
                }
            }
            let mut jobs: Vec<JobState> = replay(&events, Until::End)
                .states
                .into_values()
                .filter(|j| state.is_empty() || state.iter().any(|s| matches_state(j, s)))
                .filter(|j| job_type.as_ref().is_none_or(|t| &j.job_type == t))
                .filter(|j| since.is_none_or(|t| j.last_at_ms >= t))
                .collect();
            jobs.sort_by_key(|j| j.last_seq);
            if let Some(n) = limit {
                jobs.drain(..jobs.len().saturating_sub(n));
            }
            print_jobs(&jobs, json)?;
            warn_damage(&damaged);
        }
        JournalCommand::Show { job, json } => {
            let id = JobId::new(job.clone()).context("invalid job id")?;
            let (events, _) = load(&open()?, 0).await?;
            let mine: Vec<&JobEvent> = events.iter().filter(|e| e.job_id == id).collect();
            if mine.is_empty() {
                bail!("no job `{job}` in the journal at {}", dir.display());
            }
            if json {
                let state = replay(mine.iter().copied(), Until::End).states.remove(&id);
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"state": state, "events": mine})
                    )?
                );
            } else {
                print_timeline(&mine);
            }
        }
        JournalCommand::Tail {
            lines,
            follow,
            json,
        } => {
            let (events, damaged) = load(&open()?, 0).await?;
            warn_damage(&damaged);
            let start = events.len().saturating_sub(lines);
            let mut last = 0;
            for ev in &events[start..] {
                print_event(ev, json)?;
            }
            if let Some(ev) = events.last() {
                last = ev.seq;
            }
            if !follow {
                return Ok(());
            }
            loop {
                // Reopen each time: a directly opened journal must not keep a worker from starting.
                let access = open()?;
                let pause = if access.is_remote() { 250 } else { 1000 };
                let (new, _) = load(&access, last + 1).await?;
                drop(access);
                for ev in &new {
                    print_event(ev, json)?;
                    last = ev.seq;
                }
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        JournalCommand::Replay {
            at_seq,
            at,
            job,
            execute,
            enable_shell,
            json,
        } => {
            let until = match (at_seq, at) {
                (Some(s), _) => Until::Seq(s),
                (None, Some(t)) => Until::TimeMs(format::parse_time(&t)?),
                (None, None) => Until::End,
            };
            let (events, _) = load(&open()?, 0).await?;
            let mut r = replay(&events, until);
            for (seq, why) in &r.refused {
                eprintln!("warning: event {seq} was refused by the fold: {why}");
            }
            match job {
                Some(job) => {
                    let id = JobId::new(job.clone()).context("invalid job id")?;
                    let Some(state) = r.states.remove(&id) else {
                        bail!("job `{job}` has no events up to that point");
                    };
                    if execute {
                        let recorded = events.iter().rev().find_map(|e| match &e.event {
                            EventKind::Received { job } if e.job_id == id => Some(job.clone()),
                            _ => None,
                        });
                        let recorded = recorded
                            .with_context(|| format!("job `{job}` has no recorded delivery"))?;
                        return execute_locally(recorded, enable_shell, data_dir).await;
                    }
                    println!("{}", serde_json::to_string_pretty(&state)?);
                }
                None => {
                    let mut jobs: Vec<JobState> = r.states.into_values().collect();
                    jobs.sort_by_key(|j| j.last_seq);
                    if !json {
                        println!(
                            "state as of {} ({} events folded)",
                            describe_until(until),
                            r.events
                        );
                    }
                    print_jobs(&jobs, json)?;
                }
            }
        }
        JournalCommand::Export {
            from_seq,
            since,
            job,
        } => {
            let since = since
                .map(|s| format::parse_since(&s, now_ms()))
                .transpose()?;
            let job = job.map(JobId::new).transpose().context("invalid job id")?;
            let (events, damaged) = load(&open()?, from_seq).await?;
            use std::io::Write as _;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            for ev in events
                .iter()
                .filter(|e| since.is_none_or(|t| e.at_ms >= t))
                .filter(|e| job.as_ref().is_none_or(|j| &e.job_id == j))
            {
                serde_json::to_writer(&mut out, ev)?;
                writeln!(out)?;
            }
            out.flush()?;
            warn_damage(&damaged);
        }
        JournalCommand::Stats { json } => {
            let access = open()?;
            let info = access.info().await?;
            let (events, damaged) = load(&access, 0).await?;
            let r = replay(&events, Until::End);
            let mut by_state: BTreeMap<&str, u64> = BTreeMap::new();
            let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
            for s in r.states.values() {
                *by_state
                    .entry(s.phase.map_or("unknown", |p| p.label()))
                    .or_default() += 1;
                *by_type.entry(s.job_type.clone()).or_default() += 1;
            }
            let unsettled = r.states.values().filter(|s| !s.is_settled()).count();
            if json {
                let v = serde_json::json!({
                    "path": info.path, "events": info.events, "jobs": info.jobs,
                    "last_seq": info.last_seq, "size_on_disk": info.size_on_disk,
                    "damaged": damaged.len(), "unsettled": unsettled,
                    "by_state": by_state, "by_type": by_type,
                    "served_by_running_worker": access.is_remote(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("journal      {}", info.path.display());
                println!(
                    "read via     {}",
                    if access.is_remote() {
                        "the running worker's socket"
                    } else {
                        "direct open (no worker holds it)"
                    }
                );
                println!("events       {} (last seq {})", info.events, info.last_seq);
                println!(
                    "jobs         {} ({unsettled} still owed a settlement)",
                    info.jobs
                );
                println!("size on disk {}", format::bytes(info.size_on_disk));
                println!("damaged      {}", damaged.len());
                println!();
                let rows: Vec<Vec<String>> = by_state
                    .iter()
                    .map(|(k, v)| vec![k.to_string(), v.to_string()])
                    .collect();
                table(&["STATE", "JOBS"], &rows);
                println!();
                let rows: Vec<Vec<String>> = by_type
                    .iter()
                    .map(|(k, v)| vec![k.clone(), v.to_string()])
                    .collect();
                table(&["TYPE", "JOBS"], &rows);
            }
        }
        JournalCommand::Compact {
            max_age,
            max_size,
            json,
        } => {
            if max_age.is_none() && max_size.is_none() {
                bail!("say what to keep: --max-age (e.g. 7d) and/or --max-size (e.g. 1GiB)");
            }
            let policy = RetentionPolicy {
                max_age: max_age.map(|a| format::parse_duration(&a)).transpose()?,
                max_bytes: max_size.map(|s| format::parse_size(&s)).transpose()?,
            };
            let report = open()?.compact(&policy).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!(
                    "removed {} settled jobs ({} events, {}) and {} damaged entries; {} jobs remain",
                    report.jobs_removed,
                    report.events_removed,
                    format::bytes(report.bytes_removed),
                    report.damaged_removed,
                    report.jobs_after
                );
            }
        }
    }
    Ok(())
}

/// Runs a recorded job's handler here, printing chunks as they come and then the result.
async fn execute_locally(
    job: citadel_transports::Job,
    enable_shell: bool,
    data_dir: &Path,
) -> anyhow::Result<()> {
    use crate::handlers::{ChunkSink, JobContext, Registry, ShellPolicy};
    let registry = Registry::builtin(ShellPolicy {
        enabled: enable_shell,
        workspace: data_dir.join("workspace"),
        ..ShellPolicy::default()
    })
    .with_node_handlers(
        crate::handlers::DownloadPolicy::new(data_dir.join("models")),
        crate::handlers::ExtractionPolicy::default(),
    )
    .context("building the HTTP client")?;
    let Some(handler) = registry.get(&job.job_type) else {
        bail!(
            "job type `{}` cannot run here; supported: {}",
            job.job_type,
            registry.names().join(", ")
        );
    };
    eprintln!(
        "re-running {} ({}) locally; nothing is journaled or settled",
        job.id, job.job_type
    );
    let (chunks, mut rx) = ChunkSink::channel(256);
    let ctx = JobContext {
        job,
        cancel: tokio_util::sync::CancellationToken::new(),
        deadline: None,
        chunks,
    };
    let printer = tokio::spawn(async move {
        while let Some(chunk) = rx.recv().await {
            eprint!("{chunk}");
        }
    });
    let result = handler.run(&ctx).await;
    drop(ctx);
    let _ = printer.await;
    match result {
        Ok(value) => {
            println!("{}", serde_json::to_string_pretty(&value)?);
            Ok(())
        }
        Err(e) => bail!(
            "the job failed ({}): {}",
            if e.retryable {
                "retryable"
            } else {
                "permanent"
            },
            e.message
        ),
    }
}

async fn load(access: &JournalAccess, from: u64) -> anyhow::Result<(Vec<JobEvent>, Vec<Damage>)> {
    let mut events = Vec::new();
    let mut damaged = Vec::new();
    for item in access.events(from).await? {
        match item {
            Ok(ev) => events.push(ev),
            Err(d) => damaged.push(d),
        }
    }
    Ok((events, damaged))
}

fn warn_damage(damaged: &[Damage]) {
    if !damaged.is_empty() {
        eprintln!(
            "warning: {} damaged journal entries were skipped (first: seq {}: {}); `citadel journal compact` removes them",
            damaged.len(),
            damaged[0].seq,
            damaged[0].what
        );
    }
}

fn matches_state(job: &JobState, wanted: &str) -> bool {
    match wanted {
        "unsettled" => !job.is_settled(),
        label => job.phase.is_some_and(|p| p.label() == label),
    }
}

fn describe_until(until: Until) -> String {
    match until {
        Until::End => "now".into(),
        Until::Seq(s) => format!("seq {s}"),
        Until::TimeMs(t) => format_ms(t),
    }
}

fn print_jobs(jobs: &[JobState], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(jobs)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            vec![
                j.job_id.to_string(),
                j.job_type.clone(),
                j.phase.map_or("?", |p| p.label()).to_string(),
                j.attempts.to_string(),
                j.transport.clone(),
                format_ms(j.last_at_ms),
                format::duration(j.last_at_ms.saturating_sub(j.first_at_ms)),
            ]
        })
        .collect();
    table(
        &[
            "JOB",
            "TYPE",
            "STATE",
            "ATTEMPTS",
            "TRANSPORT",
            "LAST EVENT",
            "SPAN",
        ],
        &rows,
    );
    Ok(())
}

fn print_timeline(events: &[&JobEvent]) {
    let mut rows = Vec::new();
    let mut prev: Option<u64> = None;
    for ev in events {
        rows.push(vec![
            ev.seq.to_string(),
            format_ms(ev.at_ms),
            prev.map_or("".into(), |p| {
                format!("+{}", format::duration(ev.at_ms.saturating_sub(p)))
            }),
            ev.event.name().to_string(),
            ev.delivery_id.clone().unwrap_or_default(),
            detail(&ev.event),
        ]);
        prev = Some(ev.at_ms);
    }
    println!("job {} ({} events)", events[0].job_id, events.len());
    table(
        &["SEQ", "TIME", "AFTER", "EVENT", "DELIVERY", "DETAIL"],
        &rows,
    );
}

fn print_event(ev: &JobEvent, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(ev)?);
    } else {
        println!(
            "{:>8}  {}  {:<14} {:<13} {}",
            ev.seq,
            format_ms(ev.at_ms),
            ev.job_id,
            ev.event.name(),
            detail(&ev.event)
        );
    }
    Ok(())
}

fn detail(event: &EventKind) -> String {
    let clip = |s: &str| {
        let one_line = s.replace('\n', " ");
        if one_line.chars().count() > 80 {
            format!("{}…", one_line.chars().take(80).collect::<String>())
        } else {
            one_line
        }
    };
    match event {
        EventKind::Received { job } => format!(
            "type={} attempt={} source={}",
            job.job_type, job.attempt, job.source
        ),
        EventKind::Started { attempt } => format!("attempt {attempt}"),
        EventKind::Chunk { index } => format!("chunks through #{index}"),
        EventKind::Succeeded { result } => clip(&result.to_string()),
        EventKind::Failed { error, retryable } => {
            format!(
                "{} ({})",
                clip(error),
                if *retryable { "retryable" } else { "permanent" }
            )
        }
        EventKind::Cancelled { reason }
        | EventKind::Interrupted { reason }
        | EventKind::Skipped { reason } => clip(reason),
        EventKind::DeadLettered { reason } => clip(reason),
        EventKind::TimedOut { after_ms } => format!("after {}", format::duration(*after_ms)),
        EventKind::Retried { delay_ms } => format!("again in {}", format::duration(*delay_ms)),
        EventKind::Acked | EventKind::Released => String::new(),
    }
}
