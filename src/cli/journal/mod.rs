//! `citadel journal`: the debugging tool over the job journal (docs/journal.md). It opens the journal
//! directly when no worker holds it, and reads it through the worker's socket when one does, so it
//! works on a running node without stopping it and without the control plane. Every view is a
//! fold of the stored events ([`citadel_journal::replay`]); nothing here appends events. One
//! function per subcommand; printing lives in [`render`], `replay --execute` in [`execute`].

mod execute;
mod render;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_journal::remote::JournalAccess;
use citadel_journal::{
    now_ms, replay, Damage, EventKind, JobEvent, JobState, Phase, RetentionPolicy, Until,
};
use citadel_transports::JobId;
use clap::{Args, Subcommand};

use crate::format::{self, table};
use render::{describe_until, print_event, print_jobs, print_timeline, warn_damage};

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
    Ls(LsArgs),
    /// Show one job's timeline, with the time between events.
    Show(ShowArgs),
    /// Print the last events, and with -f keep printing new ones as they are appended.
    Tail(TailArgs),
    /// Fold the events into each job's state as of a point in the past.
    Replay(ReplayArgs),
    /// Write events as JSON lines (one event per line) to stdout.
    Export(ExportArgs),
    /// Counts per state and type, size on disk, damaged entries.
    Stats(StatsArgs),
    /// Remove settled jobs by age and/or size (never a job still owed a settlement).
    Compact(CompactArgs),
}

// The argument structs carry no doc comment: the variant's comment is the subcommand's help.

#[derive(Debug, Args)]
struct LsArgs {
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
}

#[derive(Debug, Args)]
struct ShowArgs {
    job: String,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct TailArgs {
    /// How many past events to print first.
    #[arg(short = 'n', long, default_value_t = 20)]
    lines: usize,
    /// Keep following the journal (Ctrl-C to stop).
    #[arg(short = 'f', long)]
    follow: bool,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ReplayArgs {
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
}

#[derive(Debug, Args)]
struct ExportArgs {
    /// Only events from this sequence number on.
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    from_seq: u64,
    /// Only events since a duration ago or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    since: Option<String>,
    /// Only this job's events.
    #[arg(long, value_name = "JOB")]
    job: Option<String>,
}

#[derive(Debug, Args)]
struct StatsArgs {
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct CompactArgs {
    /// Remove settled jobs whose last event is older than this (e.g. 7d).
    #[arg(long, value_name = "AGE")]
    max_age: Option<String>,
    /// Then remove the oldest settled jobs until the events take at most this (e.g. 1GiB).
    #[arg(long, value_name = "SIZE")]
    max_size: Option<String>,
    #[arg(long)]
    json: bool,
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
    match args.command {
        JournalCommand::Ls(a) => ls(&dir, a).await,
        JournalCommand::Show(a) => show(&dir, a).await,
        JournalCommand::Tail(a) => tail(&dir, a).await,
        JournalCommand::Replay(a) => replay_at(&dir, a, data_dir).await,
        JournalCommand::Export(a) => export(&dir, a).await,
        JournalCommand::Stats(a) => stats(&dir, a).await,
        JournalCommand::Compact(a) => compact(&dir, a).await,
    }
}

/// Opens the journal: directly, or through the socket of the worker that holds it.
fn open(dir: &Path) -> anyhow::Result<JournalAccess> {
    JournalAccess::open(dir).with_context(|| format!("opening the journal at {}", dir.display()))
}

async fn ls(dir: &Path, a: LsArgs) -> anyhow::Result<()> {
    let (events, damaged) = load(&open(dir)?, 0).await?;
    let since = a
        .since
        .map(|s| format::parse_since(&s, now_ms()))
        .transpose()?;
    for s in &a.state {
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
        .filter(|j| a.state.is_empty() || a.state.iter().any(|s| matches_state(j, s)))
        .filter(|j| a.job_type.as_ref().is_none_or(|t| &j.job_type == t))
        .filter(|j| since.is_none_or(|t| j.last_at_ms >= t))
        .collect();
    jobs.sort_by_key(|j| j.last_seq);
    if let Some(n) = a.limit {
        jobs.drain(..jobs.len().saturating_sub(n));
    }
    print_jobs(&jobs, a.json)?;
    warn_damage(&damaged);
    Ok(())
}

async fn show(dir: &Path, a: ShowArgs) -> anyhow::Result<()> {
    let ShowArgs { job, json } = a;
    let id = JobId::new(job.clone()).context("invalid job id")?;
    let (events, _) = load(&open(dir)?, 0).await?;
    let mine: Vec<&JobEvent> = events.iter().filter(|e| e.job_id == id).collect();
    if mine.is_empty() {
        bail!("no job `{job}` in the journal at {}", dir.display());
    }
    if json {
        let state = replay(mine.iter().copied(), Until::End).states.remove(&id);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({"state": state, "events": mine}))?
        );
    } else {
        print_timeline(&mine);
    }
    Ok(())
}

async fn tail(dir: &Path, a: TailArgs) -> anyhow::Result<()> {
    let (events, damaged) = load(&open(dir)?, 0).await?;
    warn_damage(&damaged);
    let start = events.len().saturating_sub(a.lines);
    for ev in &events[start..] {
        print_event(ev, a.json)?;
    }
    let mut last = events.last().map_or(0, |ev| ev.seq);
    if !a.follow {
        return Ok(());
    }
    loop {
        // Reopen each time: a directly opened journal must not keep a worker from starting.
        let access = open(dir)?;
        let pause = if access.is_remote() { 250 } else { 1000 };
        let (new, _) = load(&access, last + 1).await?;
        drop(access);
        for ev in &new {
            print_event(ev, a.json)?;
            last = ev.seq;
        }
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
}

/// `replay`: every job's state as of a point in the past, or one job's (which `--execute`
/// re-runs locally).
async fn replay_at(dir: &Path, a: ReplayArgs, data_dir: &Path) -> anyhow::Result<()> {
    let until = match (a.at_seq, a.at) {
        (Some(s), _) => Until::Seq(s),
        (None, Some(t)) => Until::TimeMs(format::parse_time(&t)?),
        (None, None) => Until::End,
    };
    let (events, _) = load(&open(dir)?, 0).await?;
    let mut r = replay(&events, until);
    for (seq, why) in &r.refused {
        eprintln!("warning: event {seq} was refused by the fold: {why}");
    }
    let Some(job) = a.job else {
        let mut jobs: Vec<JobState> = r.states.into_values().collect();
        jobs.sort_by_key(|j| j.last_seq);
        if !a.json {
            println!(
                "state as of {} ({} events folded)",
                describe_until(until),
                r.events
            );
        }
        return print_jobs(&jobs, a.json);
    };
    let id = JobId::new(job.clone()).context("invalid job id")?;
    let Some(state) = r.states.remove(&id) else {
        bail!("job `{job}` has no events up to that point");
    };
    if a.execute {
        let recorded = events.iter().rev().find_map(|e| match &e.event {
            EventKind::Received { job } if e.job_id == id => Some(job.clone()),
            _ => None,
        });
        let recorded = recorded.with_context(|| format!("job `{job}` has no recorded delivery"))?;
        return execute::execute_locally(recorded, a.enable_shell, data_dir).await;
    }
    println!("{}", serde_json::to_string_pretty(&state)?);
    Ok(())
}

async fn export(dir: &Path, a: ExportArgs) -> anyhow::Result<()> {
    let since = a
        .since
        .map(|s| format::parse_since(&s, now_ms()))
        .transpose()?;
    let job = a
        .job
        .map(JobId::new)
        .transpose()
        .context("invalid job id")?;
    let (events, damaged) = load(&open(dir)?, a.from_seq).await?;
    let chosen = events
        .iter()
        .filter(|e| since.is_none_or(|t| e.at_ms >= t))
        .filter(|e| job.as_ref().is_none_or(|j| &e.job_id == j));
    match write_json_lines(chosen) {
        // The reader closed the pipe (`| head`): it has what it wanted.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        written => written?,
    }
    warn_damage(&damaged);
    Ok(())
}

/// Writes events to stdout as JSON lines, buffered.
fn write_json_lines<'a>(events: impl Iterator<Item = &'a JobEvent>) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for ev in events {
        serde_json::to_writer(&mut out, ev)?;
        writeln!(out)?;
    }
    out.flush()
}

async fn stats(dir: &Path, a: StatsArgs) -> anyhow::Result<()> {
    let access = open(dir)?;
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
    if a.json {
        let v = serde_json::json!({
            "path": info.path, "events": info.events, "jobs": info.jobs,
            "last_seq": info.last_seq, "size_on_disk": info.size_on_disk,
            "damaged": damaged.len(), "unsettled": unsettled,
            "by_state": by_state, "by_type": by_type,
            "served_by_running_worker": access.is_remote(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
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
    Ok(())
}

async fn compact(dir: &Path, a: CompactArgs) -> anyhow::Result<()> {
    if a.max_age.is_none() && a.max_size.is_none() {
        bail!("say what to keep: --max-age (e.g. 7d) and/or --max-size (e.g. 1GiB)");
    }
    let policy = RetentionPolicy {
        max_age: a.max_age.map(|a| format::parse_duration(&a)).transpose()?,
        max_bytes: a.max_size.map(|s| format::parse_size(&s)).transpose()?,
    };
    let report = open(dir)?.compact(&policy).await?;
    if a.json {
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
    Ok(())
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

fn matches_state(job: &JobState, wanted: &str) -> bool {
    match wanted {
        "unsettled" => !job.is_settled(),
        label => job.phase.is_some_and(|p| p.label() == label),
    }
}
