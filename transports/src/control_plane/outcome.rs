//! How each attempt ended, as its worker last reported it (the type of its terminal event): sent
//! with the `ack` settlement, so the control plane decides the final state from the settling
//! lease's own word even when the terminal event itself never arrived (docs/control-plane.md).
//! Pure bookkeeping: it must never do I/O.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::events::{EventData, WireEvent};

/// The last terminal event type each unsettled job reported.
#[derive(Debug, Default)]
pub(crate) struct Outcomes(Mutex<HashMap<String, &'static str>>);

impl Outcomes {
    /// Notes `event` when it is terminal (`end`, `error`, `cancelled`), before it is sent.
    pub(crate) fn note(&self, event: &WireEvent) {
        let ty = match event.data {
            EventData::End { .. } => "end",
            EventData::Error { .. } => "error",
            EventData::Cancelled { .. } => "cancelled",
            _ => return,
        };
        self.lock().insert(event.job_id.to_string(), ty);
    }

    /// The outcome of `job`'s attempt, forgotten (the job is being settled).
    pub(crate) fn take(&self, job: &str) -> Option<&'static str> {
        self.lock().remove(job)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, &'static str>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The attempts whose `end` already reached the control plane as their recorded success
/// (`JobSource::record_success`), by job and lease: that `end` is not sent a second time.
#[derive(Debug, Default)]
pub(crate) struct Recorded(Mutex<HashMap<String, String>>);

impl Recorded {
    /// Notes that `job`'s `end` under `lease` reached the plane.
    pub(crate) fn insert(&self, job: &str, lease: &str) {
        self.lock().insert(job.to_string(), lease.to_string());
    }

    /// Whether `job`'s `end` under `lease` already reached the plane; forgotten once asked.
    pub(crate) fn take(&self, job: &str, lease: &str) -> bool {
        let mut m = self.lock();
        let hit = m.get(job).is_some_and(|l| l == lease);
        if hit {
            m.remove(job);
        }
        hit
    }

    /// Forgets `job`'s attempt (it is settled or handed back).
    pub(crate) fn forget(&self, job: &str) {
        self.lock().remove(job);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Recorded;

    #[test]
    fn a_recorded_end_is_skipped_once_and_only_under_its_lease() {
        let r = Recorded::default();
        r.insert("j", "L1");
        assert!(!r.take("j", "L2"), "another lease's end goes out");
        assert!(r.take("j", "L1"));
        assert!(!r.take("j", "L1"), "asked once");
        r.insert("j", "L3");
        r.forget("j");
        assert!(!r.take("j", "L3"), "forgotten with its attempt");
    }
}
