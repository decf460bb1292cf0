//! The body of a dead-letter message (published to `dlq.v1.<suffix>`, kept by the `DLQ` stream):
//! the original message's JSON fields, plus `reason`, `attempts`, `errors` (the history),
//! `worker_id`, `moved_at` (RFC 3339 UTC), `original_subject` and `original_stream_sequence`.
//! A body that was not a JSON object is kept as the string `original_body`. Pure code; never I/O.

use std::time::SystemTime;

use serde_json::{Map, Value};

use crate::events::rfc3339;
use crate::source::SettleContext;

/// Where the dead letter came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin<'a> {
    pub subject: &'a str,
    pub stream_sequence: u64,
    /// The original message body, when the stream still had it.
    pub body: Option<&'a [u8]>,
}

pub(crate) fn body(
    origin: Origin<'_>,
    reason: &str,
    ctx: &SettleContext<'_>,
    default_worker: &str,
    now: SystemTime,
) -> Vec<u8> {
    let mut out = match origin.body.map(serde_json::from_slice::<Value>) {
        Some(Ok(Value::Object(m))) => m,
        Some(_) => {
            let mut m = Map::new();
            let text = String::from_utf8_lossy(origin.body.unwrap_or_default()).into_owned();
            m.insert("original_body".into(), text.into());
            m
        }
        None => Map::new(),
    };
    if let Some(job) = ctx.job {
        out.entry("jobId")
            .or_insert_with(|| job.id.to_string().into());
        out.entry("type")
            .or_insert_with(|| job.job_type.clone().into());
        out.entry("payload").or_insert_with(|| job.payload.clone());
        if let Some(at) = &job.enqueued_at {
            out.entry("enqueuedAt").or_insert_with(|| at.clone().into());
        }
    }
    let worker = if ctx.worker_id.is_empty() {
        default_worker
    } else {
        &ctx.worker_id
    };
    out.insert("reason".into(), reason.into());
    out.insert("attempts".into(), ctx.attempts.into());
    out.insert("errors".into(), ctx.errors.clone().into());
    out.insert("worker_id".into(), worker.into());
    out.insert("moved_at".into(), rfc3339(now).into());
    out.insert("original_subject".into(), origin.subject.into());
    out.insert(
        "original_stream_sequence".into(),
        origin.stream_sequence.into(),
    );
    Value::Object(out).to_string().into_bytes()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;
    use crate::job::{Job, JobId};

    fn origin(body: Option<&[u8]>) -> Origin<'_> {
        Origin {
            subject: "jobs.v1.gpu-general",
            stream_sequence: 7,
            body,
        }
    }

    #[test]
    fn the_original_body_plus_the_history() {
        let ctx = SettleContext {
            job: None,
            attempts: 3,
            errors: vec!["a".into(), "b".into()],
            worker_id: String::new(),
        };
        let raw = br#"{"jobId":"j","type":"fail","payload":"{\"x\":1}"}"#;
        let v: Value = serde_json::from_slice(&body(
            origin(Some(raw)),
            "max attempts",
            &ctx,
            "w-1",
            UNIX_EPOCH + Duration::from_secs(60),
        ))
        .unwrap();
        assert_eq!(
            v,
            json!({"jobId":"j","type":"fail","payload":"{\"x\":1}","reason":"max attempts",
                   "attempts":3,"errors":["a","b"],"worker_id":"w-1",
                   "moved_at":"1970-01-01T00:01:00.000Z","original_subject":"jobs.v1.gpu-general",
                   "original_stream_sequence":7})
        );
    }

    #[test]
    fn a_non_object_body_or_a_gone_message() {
        let ctx = SettleContext::default();
        let v: Value = serde_json::from_slice(&body(
            origin(Some(b"{nope")),
            "bad",
            &ctx,
            "w",
            SystemTime::now(),
        ))
        .unwrap();
        assert_eq!(v["original_body"], "{nope");
        let job = Job::first_delivery(
            JobId::new("j-2").unwrap(),
            "echo",
            json!({"a":1}),
            "nats:jobs.v1.gpu-general",
        );
        let ctx = SettleContext {
            job: Some(&job),
            ..Default::default()
        };
        let v: Value =
            serde_json::from_slice(&body(origin(None), "bad", &ctx, "w", SystemTime::now()))
                .unwrap();
        assert_eq!(v["jobId"], "j-2");
        assert_eq!(v["payload"], json!({"a":1}));
        assert_eq!(v["errors"], json!([]));
    }
}
