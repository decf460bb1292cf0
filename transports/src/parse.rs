//! Turning the fields of one job entry into a job, exactly per docs/wire-format.md#job-entries
//! (the Redis stream entry, and the NATS message body read as the same fields): all fields are
//! strings; `jobId`; `type` (else `payload.type`); `payload`, a JSON object encoded as a string;
//! optional `enqueuedAt`; optional `rayId` (else `payload.rayId`). Empty strings count as absent,
//! a field written twice keeps its last value, and a missing `payload` is an empty object. Pure
//! code: it must never do I/O, and it must never panic on any input (a bad entry is a
//! [`Rejected`]).

use serde_json::Value;

use crate::delivery::{Delivery, Incoming, Malformed, Receipt};
use crate::job::{Job, JobId};

/// Why an entry is not a job, with its job id when that much was valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub job_id: Option<JobId>,
    pub reason: String,
}

/// The raw fields of one entry, in the order the broker returned them.
pub type Fields = [(String, Vec<u8>)];

fn field<'a>(fields: &'a Fields, name: &str) -> Option<&'a [u8]> {
    fields
        .iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

/// A non-empty UTF-8 field; other values count as absent.
fn text_field(fields: &Fields, name: &str) -> Option<String> {
    let v = std::str::from_utf8(field(fields, name)?).ok()?;
    (!v.is_empty()).then(|| v.to_owned())
}

fn payload_text(payload: &Value, key: &str) -> Option<String> {
    match payload.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Parses the fields of one job entry delivered for the `attempt`-th time; the job's source is
/// `source` (the transport's name for where it came from, e.g. `redis:jobs:v1:gpu-general`).
pub fn parse_job(
    fields: &Fields,
    source: String,
    attempt: u32,
    max_payload: usize,
) -> Result<Job, Rejected> {
    let reject = |job_id: Option<JobId>, reason: String| Rejected { job_id, reason };
    let raw_id = field(fields, "jobId").ok_or_else(|| reject(None, "missing jobId".into()))?;
    let raw_id =
        std::str::from_utf8(raw_id).map_err(|_| reject(None, "jobId is not UTF-8".into()))?;
    let id = JobId::new(raw_id).map_err(|e| reject(None, format!("invalid jobId: {e}")))?;

    let payload = match field(fields, "payload") {
        None => Value::Object(Default::default()),
        Some(raw) if raw.len() > max_payload => {
            return Err(reject(
                Some(id),
                format!("payload is {} bytes; the limit is {max_payload}", raw.len()),
            ))
        }
        Some(raw) => match serde_json::from_slice::<Value>(raw) {
            Ok(v @ Value::Object(_)) => v,
            Ok(other) => {
                let reason = format!("payload is not a JSON object (it is {})", kind(&other));
                return Err(reject(Some(id), reason));
            }
            Err(e) => return Err(reject(Some(id), format!("payload is not valid JSON: {e}"))),
        },
    };

    let job_type = text_field(fields, "type")
        .or_else(|| payload_text(&payload, "type"))
        .ok_or_else(|| reject(Some(id.clone()), "missing type".into()))?;
    let ray_id = text_field(fields, "rayId").or_else(|| payload_text(&payload, "rayId"));
    Ok(Job {
        id,
        job_type,
        payload,
        ray_id,
        enqueued_at: text_field(fields, "enqueuedAt"),
        attempt: attempt.max(1),
        source,
    })
}

/// A parse result as what `next` returns (shared by every transport that uses this parser).
pub fn incoming(receipt: Receipt, parsed: Result<Job, Rejected>, attempt: u32) -> Incoming {
    match parsed {
        Ok(job) => Incoming::Job(Delivery { job, receipt }),
        Err(r) => Incoming::Malformed(Malformed {
            receipt,
            job_id: r.job_id,
            reason: r.reason,
            attempt: attempt.max(1),
        }),
    }
}
