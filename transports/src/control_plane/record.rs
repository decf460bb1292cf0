//! A control plane's job record (a `POST /api/v1/jobs/claim` answer, or a job pushed over the
//! WebSocket) as a delivery: `id`, `type`, `payload` (an object), `rayId`, `created_at`,
//! `attempts`, `max_attempts` (put in the payload as `maxAttempts`, which the runner reads, when the
//! producer gave it at submit: `max_attempts_given`) and
//! `lease.id` (docs/wire-format.md#nexus-http). Pure code: it must never do I/O
//! nor panic on any input (a bad record is an [`Incoming::Malformed`]).

use serde_json::{Map, Value};

use crate::delivery::{Delivery, Incoming, Malformed, Receipt};
use crate::job::{Job, JobId};

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A control plane job record (a claim answer, or a job pushed over the WebSocket) as a
/// delivery from `source`.
pub(crate) fn from_record(v: &Value, source: &str) -> Incoming {
    let raw_id = text(v, "id").unwrap_or_default();
    let lease = v
        .get("lease")
        .and_then(|l| text(l, "id"))
        .unwrap_or_default();
    let attempt = v
        .get("attempts")
        .and_then(Value::as_u64)
        .unwrap_or(1)
        .max(1) as u32;
    let receipt = Receipt::new(raw_id.clone(), lease);
    let bad = |job_id: Option<JobId>, reason: String| {
        Incoming::Malformed(Malformed {
            receipt: receipt.clone(),
            job_id,
            reason,
            attempt,
        })
    };
    let id = match JobId::new(raw_id) {
        Ok(id) => id,
        Err(e) => return bad(None, format!("invalid job id: {e}")),
    };
    let Some(job_type) = text(v, "type") else {
        return bad(Some(id), "missing type".into());
    };
    let mut payload = match v.get("payload") {
        Some(p @ Value::Object(_)) => p.clone(),
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(_) => return bad(Some(id), "payload is not a JSON object".into()),
    };
    // The attempts the producer gave at submit, as the control plane holds them, reach the
    // runner as the payload's `maxAttempts` (which it reads) and win over the payload's own.
    let given = v.get("max_attempts_given").and_then(Value::as_bool) == Some(true);
    if let (true, Some(max), Some(p)) = (
        given,
        v.get("max_attempts").and_then(Value::as_u64),
        payload.as_object_mut(),
    ) {
        p.insert("maxAttempts".into(), max.into());
    }
    Incoming::Job(Delivery {
        job: Job {
            id,
            job_type,
            payload,
            ray_id: text(v, "rayId"),
            enqueued_at: text(v, "created_at"),
            attempt,
            source: source.into(),
        },
        receipt,
    })
}
