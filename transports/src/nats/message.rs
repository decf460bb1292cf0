//! Turning one JetStream message into a job, and reading the broker's facts out of its ack
//! subject. The body is JSON `{"jobId","type","payload","enqueuedAt"?,"rayId"?}` where `payload`
//! is a JSON object or a string holding one (as Redis entries carry it); the fields then follow
//! the Redis rules exactly (the same parser, [`crate::parse`]: `type` falls back to `payload.type`, `rayId` to
//! `payload.rayId`, empty strings are absent). Pure code: it must never do I/O nor panic on any
//! input (a bad message is an [`Incoming::Malformed`]).

use serde_json::Value;

use super::config::NatsConfig;
use crate::delivery::{Incoming, Receipt};
use crate::parse::{incoming, parse_job, Rejected};

/// The broker's facts about one delivery, from its ack subject
/// (`$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ts>.<pending>`, or the
/// newer form with a domain and an account hash after `$JS.ACK`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckInfo {
    pub delivered: u32,
    pub stream_sequence: u64,
}

/// Parses an ack subject; `None` when it is not one.
pub fn ack_info(reply: &str) -> Option<AckInfo> {
    let t: Vec<&str> = reply.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    // v1: 9 tokens, delivered at 4. v2: 11 or 12 tokens, domain and account hash first.
    let at = if t.len() == 9 { 4 } else { 6 };
    Some(AckInfo {
        delivered: t.get(at)?.parse().ok()?,
        stream_sequence: t.get(at + 1)?.parse().ok()?,
    })
}

/// The body's fields in the form the Redis entry parser reads: only strings count, a payload
/// object is re-encoded as the string Redis would have carried.
fn as_fields(body: &serde_json::Map<String, Value>) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut fields = Vec::with_capacity(5);
    for name in ["jobId", "type", "payload", "enqueuedAt", "rayId"] {
        match body.get(name) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => fields.push((name.to_owned(), s.clone().into_bytes())),
            Some(v @ Value::Object(_)) if name == "payload" => {
                fields.push((name.to_owned(), v.to_string().into_bytes()))
            }
            Some(_) if name == "payload" => {
                return Err("payload is not a JSON object (nor a string holding one)".into())
            }
            Some(_) => return Err(format!("{name} is not a string")),
        }
    }
    Ok(fields)
}

/// Parses the body of a message delivered from `subject` for the `attempt`-th time.
pub fn parse(
    body: &[u8],
    subject: &str,
    attempt: u32,
    max_payload: usize,
) -> Result<crate::job::Job, Rejected> {
    let reject = |reason: String| Rejected {
        job_id: None,
        reason,
    };
    if body.len() > max_payload {
        return Err(reject(format!(
            "message is {} bytes; the limit is {max_payload}",
            body.len()
        )));
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| reject(format!("message is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(reject("message is not a JSON object".into()));
    };
    let fields = as_fields(&map).map_err(|reason| Rejected {
        job_id: map
            .get("jobId")
            .and_then(Value::as_str)
            .and_then(|s| crate::job::JobId::new(s).ok()),
        reason,
    })?;
    parse_job(
        &fields,
        NatsConfig::source_name(subject),
        attempt,
        max_payload,
    )
}

/// Parses a delivery into what `next` returns.
pub fn to_incoming(
    body: &[u8],
    subject: &str,
    reply: &str,
    attempt: u32,
    max_payload: usize,
) -> Incoming {
    let parsed = parse(body, subject, attempt, max_payload);
    incoming(Receipt::new(subject, reply), parsed, attempt)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const S: &str = "jobs.v1.gpu-general";

    #[test]
    fn ack_subjects_of_both_forms() {
        assert_eq!(
            ack_info("$JS.ACK.JOBS.workers.3.17.9.1700000000000000000.0"),
            Some(AckInfo {
                delivered: 3,
                stream_sequence: 17
            })
        );
        assert_eq!(
            ack_info("$JS.ACK.dom.ACCHASH.JOBS.workers.2.5.4.1700000000000000000.1.tok"),
            Some(AckInfo {
                delivered: 2,
                stream_sequence: 5
            })
        );
        assert_eq!(ack_info("_INBOX.x"), None);
        assert_eq!(ack_info("$JS.ACK.a.b.x.y.z.w.v"), None);
    }

    #[test]
    fn payload_as_object_or_string() {
        for payload in [
            json!({"a": 1, "type": "echo"}),
            json!(r#"{"a":1,"type":"echo"}"#),
        ] {
            let body = json!({"jobId": "j", "payload": payload, "rayId": "r"}).to_string();
            let job = parse(body.as_bytes(), S, 2, 1024).unwrap();
            assert_eq!(job.job_type, "echo");
            assert_eq!(job.payload["a"], 1);
            assert_eq!(job.ray_id.as_deref(), Some("r"));
            assert_eq!(job.attempt, 2);
            assert_eq!(job.source, "nats:jobs.v1.gpu-general");
        }
    }

    #[test]
    fn bad_messages_are_rejected_with_a_reason() {
        let cases: &[(&str, bool, &str)] = &[
            ("{nope", false, "not valid JSON"),
            ("[1]", false, "not a JSON object"),
            (r#"{"type":"noop"}"#, false, "missing jobId"),
            (
                r#"{"jobId":5,"type":"noop"}"#,
                false,
                "jobId is not a string",
            ),
            (r#"{"jobId":"j","payload":[1]}"#, true, "not a JSON object"),
            (
                r#"{"jobId":"j","payload":"[1]"}"#,
                true,
                "not a JSON object",
            ),
            (r#"{"jobId":"j","payload":{}}"#, true, "missing type"),
        ];
        for (body, has_id, reason) in cases {
            let err = parse(body.as_bytes(), S, 1, 1024).unwrap_err();
            assert_eq!(err.job_id.is_some(), *has_id, "{body}");
            assert!(err.reason.contains(reason), "{body}: {}", err.reason);
        }
        let big = json!({"jobId":"j","type":"echo","payload":{"x":"a".repeat(100)}}).to_string();
        let err = parse(big.as_bytes(), S, 1, 64).unwrap_err();
        assert!(err.reason.contains("the limit is 64"), "{}", err.reason);
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..128), max in 0usize..256) {
            if let Incoming::Job(d) = to_incoming(&body, S, "r", 1, max) {
                prop_assert!(d.job.payload.is_object());
            }
        }

        #[test]
        fn arbitrary_json_never_panics(
            id in proptest::option::of("[ -~]{0,8}"),
            ty in proptest::option::of("[a-z]{0,5}"),
            payload in prop_oneof![Just(json!(null)), Just(json!({})), Just(json!("{}")), Just(json!(3)), Just(json!({"type":"x"}))],
        ) {
            let body = json!({"jobId": id, "type": ty, "payload": payload}).to_string();
            let _ = to_incoming(body.as_bytes(), S, "r", 1, 1 << 20);
        }
    }
}
