//! How `citadel journal` prints: job tables, one job's timeline, event lines, the warning about
//! damaged entries. Output only; it decides nothing and reads nothing from the journal.

use citadel_journal::{format_ms, Damage, EventKind, JobEvent, JobState, Until};

use crate::format::{self, table};

pub(super) fn warn_damage(damaged: &[Damage]) {
    if !damaged.is_empty() {
        eprintln!(
            "warning: {} damaged journal entries were skipped (first: seq {}: {}); `citadel journal compact` removes them",
            damaged.len(),
            damaged[0].seq,
            damaged[0].what
        );
    }
}

pub(super) fn describe_until(until: Until) -> String {
    match until {
        Until::End => "now".into(),
        Until::Seq(s) => format!("seq {s}"),
        Until::TimeMs(t) => format_ms(t),
    }
}

pub(super) fn print_jobs(jobs: &[JobState], json: bool) -> anyhow::Result<()> {
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

pub(super) fn print_timeline(events: &[&JobEvent]) {
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

pub(super) fn print_event(ev: &JobEvent, json: bool) -> anyhow::Result<()> {
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
