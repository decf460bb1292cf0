//! The worker's journal: opening it (refusing a data directory another worker holds, reporting
//! what recovery found) and keeping it within its retention. It must never decide what happens
//! to a job; the runner does.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use citadel_journal::{Durability, Journal, JournalError, JournalOptions, RetentionPolicy};

use super::DurabilityArg;

/// Opens (and recovers) the journal of `data_dir`.
pub(super) fn open(data_dir: &Path, durability: DurabilityArg) -> anyhow::Result<Journal> {
    let journal_dir = crate::paths::journal_dir(data_dir);
    let options = JournalOptions {
        durability: match durability {
            DurabilityArg::Durable => Durability::Durable,
            DurabilityArg::Buffered => Durability::Buffered,
        },
        recover: true,
    };
    let (journal, report) = match Journal::open(&journal_dir, options) {
        Ok(opened) => opened,
        Err(JournalError::Locked { .. }) => bail!(
            "another citadel worker is already running on the data directory {} (its journal is locked); \
             stop it first, or give this worker its own --data-dir",
            data_dir.display()
        ),
        Err(e) => return Err(e).context("opening the journal"),
    };
    if !report.interrupted.is_empty() {
        tracing::warn!(
            count = report.interrupted.len(),
            "jobs were running when the worker last stopped; marked interrupted"
        );
    }
    if !report.damaged.is_empty() {
        tracing::warn!(
            count = report.damaged.len(),
            "damaged journal entries were skipped (see `citadel journal stats`)"
        );
    }
    Ok(journal)
}

/// Compacts the journal now and every hour; a failure is logged and tried again next time.
pub(super) async fn keep_trimmed(journal: Journal, policy: RetentionPolicy) {
    if policy.max_age.is_none() && policy.max_bytes.is_none() {
        return;
    }
    let mut hourly = tokio::time::interval(Duration::from_secs(3600));
    loop {
        hourly.tick().await;
        let j = journal.clone();
        let p = policy.clone();
        match tokio::task::spawn_blocking(move || j.compact(&p)).await {
            Ok(Ok(r)) if r.jobs_removed + r.damaged_removed > 0 => {
                tracing::info!(
                    jobs = r.jobs_removed,
                    events = r.events_removed,
                    damaged = r.damaged_removed,
                    "journal retention removed settled jobs"
                )
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "journal retention failed; trying again in an hour")
            }
            Err(e) => tracing::warn!(error = %e, "journal retention task failed"),
        }
    }
}
