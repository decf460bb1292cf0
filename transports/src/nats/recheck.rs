//! The check a delivery passes before it is handed out when its job may already be settled:
//! every **redelivery** (the server's delivery count above 1: its ack wait ran out on whichever
//! worker had it, or it was given back) and every delivery of a message stored before the
//! fetcher's latest (re)connection (a **suspect**: what a restarted nats-server 2.9 forgot, see
//! `fetch`). The job's completion record (`record`) and its status are read together, one round
//! trip; [`decide`] is the verdict, a pure function of what they say, the worker and the time.
//! This module must never settle a message (the fetcher does, by the verdict) nor write a
//! record.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::debug;

use super::Inner;
use crate::job::JobId;

/// What a delivery's job is, by its completion record and its status.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Its success is recorded (written before any worker journaled it): acked with the
    /// recorded `end` (this JSON) published again, never run.
    Recorded(Bytes),
    /// No record, but its status is `completed` (written with its `end`, once a success was
    /// journaled): acked again, never run.
    Completed,
    /// A suspect that another worker claimed lately and may still be settling (its `end` and
    /// ack wait on the server that was down): handed back for this long.
    Elsewhere(Duration),
    /// Nothing stops it from running here (also when the lookups failed: at least once).
    Free,
}

/// Looks up `job` in the completion and status buckets at once, then [`decide`]s.
pub(crate) async fn seen(inner: &Inner, job: &JobId, suspect: bool) -> Seen {
    let (record, status) = tokio::join!(
        super::record::lookup(&inner.done, job),
        inner.status.get(super::token(job)),
    );
    let record = record.unwrap_or_else(|e| {
        debug!(job_id = %job, error = %e, "looking up the completion record failed");
        None
    });
    let status = match status {
        Ok(v) => v.and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok()),
        Err(e) => {
            debug!(job_id = %job, error = %e, "looking up the job's status failed");
            None
        }
    };
    let me = &inner.cfg.worker_id;
    let now = SystemTime::now();
    decide(record, status.as_ref(), suspect, me, inner.cfg.lease, now)
}

/// The verdict. A record decides alone. A suspect claimed by another worker counts for the
/// lease plus 5 s after the claim (the status's `updated_at`), as a Redis fetcher that saw Redis
/// fail takes over no lease for that long: the other worker's settlement is retried meanwhile.
/// An ordinary redelivery is never held back by a claim: its ack wait already ran out.
pub(crate) fn decide(
    record: Option<Bytes>,
    status: Option<&serde_json::Value>,
    suspect: bool,
    me: &str,
    lease: Duration,
    now: SystemTime,
) -> Seen {
    if let Some(end) = record {
        return Seen::Recorded(end);
    }
    let Some(status) = status else {
        return Seen::Free;
    };
    match status["status"].as_str() {
        Some("completed") => Seen::Completed,
        Some("processing") if suspect && status["worker_id"] != me => {
            let hold = lease + Duration::from_secs(5);
            let claimed = status["updated_at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            let left = claimed
                .and_then(|at| (at + hold).duration_since(now).ok())
                .map(|left| left.min(hold));
            match left {
                Some(left) if !left.is_zero() => Seen::Elsewhere(left),
                _ => Seen::Free,
            }
        }
        _ => Seen::Free,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::events::rfc3339;

    const LEASE: Duration = Duration::from_secs(2);

    fn claim(by: &str, at: SystemTime) -> serde_json::Value {
        json!({"status": "processing", "worker_id": by, "updated_at": rfc3339(at)})
    }

    #[test]
    fn a_record_decides_whatever_the_status_says() {
        let now = SystemTime::now();
        let end = Bytes::from_static(b"{\"type\":\"end\"}");
        for status in [
            None,
            Some(claim("b", now)),
            Some(json!({"status": "failed"})),
        ] {
            for suspect in [false, true] {
                let seen = decide(Some(end.clone()), status.as_ref(), suspect, "a", LEASE, now);
                assert_eq!(seen, Seen::Recorded(end.clone()));
            }
        }
    }

    #[test]
    fn a_completed_status_without_a_record_is_acked() {
        let done = json!({"status": "completed", "worker_id": "b"});
        let now = SystemTime::now();
        assert_eq!(
            decide(None, Some(&done), false, "a", LEASE, now),
            Seen::Completed
        );
        assert_eq!(decide(None, None, false, "a", LEASE, now), Seen::Free);
    }

    #[test]
    fn only_a_suspect_is_held_for_another_workers_recent_claim() {
        // Whole seconds: `updated_at` keeps milliseconds.
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let recent = claim("b", now - Duration::from_secs(1));
        let held = decide(None, Some(&recent), true, "a", LEASE, now);
        assert_eq!(held, Seen::Elsewhere(Duration::from_secs(6)));
        assert_eq!(
            decide(None, Some(&recent), false, "a", LEASE, now),
            Seen::Free
        );
        let mine = claim("a", now);
        assert_eq!(decide(None, Some(&mine), true, "a", LEASE, now), Seen::Free);
        let old = claim("b", now - Duration::from_secs(8));
        assert_eq!(decide(None, Some(&old), true, "a", LEASE, now), Seen::Free);
    }

    proptest! {
        #[test]
        fn a_hold_never_outlasts_the_lease_plus_five_seconds(
            ago_ms in -100_000i64..100_000, lease_ms in 1u64..120_000, suspect: bool,
        ) {
            let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
            let at = if ago_ms >= 0 {
                now - Duration::from_millis(ago_ms as u64)
            } else {
                now + Duration::from_millis(ago_ms.unsigned_abs())
            };
            let lease = Duration::from_millis(lease_ms);
            match decide(None, Some(&claim("b", at)), suspect, "a", lease, now) {
                Seen::Elsewhere(hold) => {
                    prop_assert!(suspect);
                    prop_assert!(!hold.is_zero() && hold <= lease + Duration::from_secs(5));
                }
                Seen::Free => {}
                other => prop_assert!(false, "{other:?}"),
            }
        }
    }
}
