//! The fields of a dead-letter entry (docs/wire-format.md#job-entries): `original_message_id`, `original_queue`,
//! `reason`, `moved_at` (RFC 3339 UTC), `worker_id`, `jobId`, `enqueuedAt` (when known),
//! `payload`, plus our `attempts` and `errors` (a JSON array of strings). Pure code; the move
//! itself is the dead-letter script's job (which also swaps in the original entry's exact
//! `jobId`/`type`/`payload`/`enqueuedAt`/`rayId` text when the entry still exists). Never I/O.

use std::time::SystemTime;

use crate::delivery::Receipt;
use crate::events::rfc3339;
use crate::source::SettleContext;

/// The dead-letter fields for `receipt`, known from the settle context.
pub(crate) fn fields(
    receipt: &Receipt,
    reason: &str,
    ctx: &SettleContext<'_>,
    default_worker: &str,
    now: SystemTime,
) -> Vec<(String, String)> {
    let worker = if ctx.worker_id.is_empty() {
        default_worker
    } else {
        &ctx.worker_id
    };
    let mut out = vec![
        ("original_message_id".to_owned(), receipt.id().to_owned()),
        ("original_queue".to_owned(), receipt.queue().to_owned()),
        ("reason".to_owned(), reason.to_owned()),
        ("moved_at".to_owned(), rfc3339(now)),
        ("worker_id".to_owned(), worker.to_owned()),
        ("attempts".to_owned(), ctx.attempts.to_string()),
        (
            "errors".to_owned(),
            serde_json::to_string(&ctx.errors).unwrap_or_else(|_| "[]".to_owned()),
        ),
    ];
    if let Some(job) = ctx.job {
        out.push(("jobId".to_owned(), job.id.to_string()));
        out.push(("type".to_owned(), job.job_type.clone()));
        if let Some(at) = &job.enqueued_at {
            out.push(("enqueuedAt".to_owned(), at.clone()));
        }
        out.push(("payload".to_owned(), job.payload.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::job::{Job, JobId};

    fn get<'a>(f: &'a [(String, String)], k: &str) -> Option<&'a str> {
        f.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn fields_of_a_known_job() {
        let job = Job {
            id: JobId::new("j-1").unwrap(),
            job_type: "fail".into(),
            payload: serde_json::json!({"x": 1}),
            ray_id: None,
            enqueued_at: Some("2026-01-01T00:00:00Z".into()),
            attempt: 3,
            source: "redis:jobs:v1:gpu-general".into(),
        };
        let ctx = SettleContext {
            job: Some(&job),
            attempts: 3,
            errors: vec!["a".into(), "b \"q\"".into()],
            worker_id: String::new(),
        };
        let r = Receipt::new("jobs:v1:gpu-general", "7-0");
        let f = fields(
            &r,
            "max attempts",
            &ctx,
            "w-1",
            UNIX_EPOCH + Duration::from_secs(60),
        );
        assert_eq!(get(&f, "original_message_id"), Some("7-0"));
        assert_eq!(get(&f, "original_queue"), Some("jobs:v1:gpu-general"));
        assert_eq!(get(&f, "reason"), Some("max attempts"));
        assert_eq!(get(&f, "moved_at"), Some("1970-01-01T00:01:00.000Z"));
        assert_eq!(get(&f, "worker_id"), Some("w-1"));
        assert_eq!(get(&f, "attempts"), Some("3"));
        assert_eq!(get(&f, "errors"), Some(r#"["a","b \"q\""]"#));
        assert_eq!(get(&f, "jobId"), Some("j-1"));
        assert_eq!(get(&f, "enqueuedAt"), Some("2026-01-01T00:00:00Z"));
        assert_eq!(get(&f, "payload"), Some(r#"{"x":1}"#));
    }

    #[test]
    fn fields_without_a_job() {
        let ctx = SettleContext {
            worker_id: "w-2".into(),
            ..Default::default()
        };
        let f = fields(
            &Receipt::new("s", "1-0"),
            "bad",
            &ctx,
            "w-1",
            SystemTime::now(),
        );
        assert_eq!(get(&f, "worker_id"), Some("w-2"));
        assert_eq!(get(&f, "errors"), Some("[]"));
        assert_eq!(get(&f, "jobId"), None);
    }
}
