//! Retention: which jobs `compact` may remove. Pure selection, no I/O. The one rule that never
//! bends: a job the worker still owes a settlement (received, running, finished but not settled)
//! is never removed, whatever its age or the journal's size.

use std::time::Duration;

use citadel_transports::JobId;
use serde::{Deserialize, Serialize};

/// What to keep. `None` means no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    /// Remove settled jobs whose last event is at least this old (`0s`: every settled job).
    pub max_age: Option<Duration>,
    /// Then remove the oldest settled jobs until the journal's events take at most this many
    /// bytes (the encoded events; the store's files are about twice that).
    pub max_bytes: Option<u64>,
}

/// What `compact` did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompactReport {
    pub jobs_before: u64,
    pub jobs_after: u64,
    pub jobs_removed: u64,
    pub events_removed: u64,
    pub bytes_removed: u64,
    pub damaged_removed: u64,
}

/// One job as retention sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionCandidate {
    pub job_id: JobId,
    pub settled: bool,
    pub last_at_ms: u64,
    pub bytes: u64,
}

/// The jobs to remove under `policy` at time `now_ms`.
pub fn select(jobs: &[RetentionCandidate], policy: &RetentionPolicy, now_ms: u64) -> Vec<JobId> {
    let mut settled: Vec<&RetentionCandidate> = jobs.iter().filter(|c| c.settled).collect();
    settled.sort_by_key(|c| (c.last_at_ms, c.job_id.clone()));
    let mut total: u64 = jobs.iter().map(|c| c.bytes).sum();
    let cutoff = policy
        .max_age
        .map(|age| now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX)));
    let mut chosen = Vec::new();
    for c in settled {
        let too_old = cutoff.is_some_and(|cut| c.last_at_ms <= cut);
        let too_big = policy.max_bytes.is_some_and(|max| total > max);
        if !(too_old || too_big) {
            // Sorted oldest first: nothing after this one is older, and the size is within bounds.
            break;
        }
        total -= c.bytes;
        chosen.push(c.job_id.clone());
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: &str, settled: bool, at: u64, bytes: u64) -> RetentionCandidate {
        RetentionCandidate {
            job_id: JobId::new(id).unwrap(),
            settled,
            last_at_ms: at,
            bytes,
        }
    }

    #[test]
    fn removes_old_settled_jobs_only() {
        let jobs = [
            c("a", true, 100, 10),
            c("b", false, 50, 10),
            c("c", true, 900, 10),
        ];
        let policy = RetentionPolicy {
            max_age: Some(Duration::from_millis(500)),
            max_bytes: None,
        };
        assert_eq!(select(&jobs, &policy, 1000), vec![JobId::new("a").unwrap()]);
    }

    #[test]
    fn trims_oldest_settled_first_until_within_size() {
        let jobs = [
            c("new", true, 300, 100),
            c("old", true, 100, 100),
            c("open", false, 1, 100),
            c("mid", true, 200, 100),
        ];
        let policy = RetentionPolicy {
            max_age: None,
            max_bytes: Some(250),
        };
        let ids: Vec<String> = select(&jobs, &policy, 1000)
            .iter()
            .map(|j| j.to_string())
            .collect();
        assert_eq!(ids, vec!["old", "mid"]);
    }

    #[test]
    fn an_unsettled_job_survives_any_policy() {
        let jobs = [c("open", false, 0, 1_000_000)];
        let policy = RetentionPolicy {
            max_age: Some(Duration::ZERO),
            max_bytes: Some(0),
        };
        assert!(select(&jobs, &policy, u64::MAX).is_empty());
    }
}
