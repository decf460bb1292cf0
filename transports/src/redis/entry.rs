//! One Redis stream entry as what `next` returns: the fields go through the shared parser
//! ([`crate::parse`]) with the job's source named after the stream. Pure code: it must never do
//! I/O, and it must never panic on any input (a bad entry is a [`Rejected`]).

use crate::delivery::{Incoming, Receipt};
use crate::job::Job;
use crate::parse::{incoming, Fields, Rejected};

/// Parses the fields of one entry of `stream`, delivered for the `attempt`-th time.
pub fn parse_job(
    fields: &Fields,
    stream: &str,
    attempt: u32,
    max_payload: usize,
) -> Result<Job, Rejected> {
    let source = super::RedisConfig::source_name(stream);
    crate::parse::parse_job(fields, source, attempt, max_payload)
}

/// Parses an entry into what `next` returns.
pub fn to_incoming(
    stream: &str,
    entry_id: &str,
    fields: &Fields,
    attempt: u32,
    max_payload: usize,
) -> Incoming {
    let receipt = Receipt::new(stream, entry_id);
    incoming(
        receipt,
        parse_job(fields, stream, attempt, max_payload),
        attempt,
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    const S: &str = "jobs:v1:gpu-general";

    fn f(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn a_full_entry_parses() {
        let fields = f(&[
            ("jobId", "j-1"),
            ("type", "echo"),
            (
                "payload",
                r#"{"a":1,"type":"ignored","rayId":"also-ignored"}"#,
            ),
            ("enqueuedAt", "2026-11-22T06:00:00Z"),
            ("rayId", "ray-1"),
        ]);
        let job = parse_job(&fields, S, 2, 1024).unwrap();
        assert_eq!(job.id.as_str(), "j-1");
        assert_eq!(job.job_type, "echo");
        assert_eq!(job.payload["a"], 1);
        assert_eq!(job.ray_id.as_deref(), Some("ray-1"));
        assert_eq!(job.enqueued_at.as_deref(), Some("2026-11-22T06:00:00Z"));
        assert_eq!(job.attempt, 2);
        assert_eq!(job.source, "redis:jobs:v1:gpu-general");
    }

    #[test]
    fn type_and_ray_id_fall_back_to_the_payload() {
        let fields = f(&[
            ("jobId", "j"),
            ("type", ""),
            ("payload", r#"{"type":"noop","rayId":"r"}"#),
        ]);
        let job = parse_job(&fields, S, 1, 1024).unwrap();
        assert_eq!(job.job_type, "noop");
        assert_eq!(job.ray_id.as_deref(), Some("r"));
        assert_eq!(job.enqueued_at, None);
    }

    #[test]
    fn a_missing_payload_is_an_empty_object() {
        let job = parse_job(&f(&[("jobId", "j"), ("type", "noop")]), S, 1, 8).unwrap();
        assert_eq!(job.payload, json!({}));
    }

    #[test]
    fn bad_entries_are_rejected_with_a_reason() {
        type Case<'a> = (&'a [(&'a str, &'a str)], bool, &'a str);
        let cases: &[Case<'_>] = &[
            (&[("type", "noop")], false, "missing jobId"),
            (&[("jobId", ""), ("type", "noop")], false, "invalid jobId"),
            (
                &[("jobId", "j"), ("payload", "[1]")],
                true,
                "not a JSON object",
            ),
            (
                &[("jobId", "j"), ("payload", "{nope")],
                true,
                "not valid JSON",
            ),
            (
                &[("jobId", "j"), ("payload", "\"x\"")],
                true,
                "it is a string",
            ),
            (&[("jobId", "j"), ("payload", "{}")], true, "missing type"),
        ];
        for (pairs, has_id, reason) in cases {
            let err = parse_job(&f(pairs), S, 1, 1024).unwrap_err();
            assert_eq!(err.job_id.is_some(), *has_id, "{pairs:?}");
            assert!(err.reason.contains(reason), "{pairs:?}: {}", err.reason);
        }
    }

    #[test]
    fn oversized_payloads_are_rejected() {
        let big = format!(r#"{{"type":"echo","x":"{}"}}"#, "a".repeat(100));
        let err = parse_job(&f(&[("jobId", "j"), ("payload", &big)]), S, 1, 64).unwrap_err();
        assert!(err.reason.contains("the limit is 64"), "{}", err.reason);
        assert_eq!(err.job_id.unwrap().as_str(), "j");
    }

    #[test]
    fn malformed_entries_keep_their_receipt() {
        let inc = to_incoming(S, "5-1", &f(&[("jobId", "j")]), 3, 1024);
        let Incoming::Malformed(m) = inc else {
            panic!("expected malformed")
        };
        assert_eq!(m.receipt, Receipt::new(S, "5-1"));
        assert_eq!(m.attempt, 3);
    }

    fn json_leaf() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "[ -~]{0,12}".prop_map(Value::String),
        ]
    }

    proptest! {
        #[test]
        fn wire_entries_round_trip(
            id in "[A-Za-z0-9_-]{1,40}",
            ty in "[a-zA-Z_]{1,20}",
            ray in proptest::option::of("[a-f0-9]{1,16}"),
            enq in proptest::option::of("[0-9T:Z-]{1,25}"),
            extra in proptest::collection::btree_map("[a-z]{1,8}", json_leaf(), 0..6),
            attempt in 1u32..1000,
        ) {
            let payload = Value::Object(extra.into_iter().filter(|(k, _)| k != "type" && k != "rayId").collect());
            let mut fields = vec![
                ("jobId".to_owned(), id.clone().into_bytes()),
                ("type".to_owned(), ty.clone().into_bytes()),
                ("payload".to_owned(), payload.to_string().into_bytes()),
            ];
            if let Some(r) = &ray { fields.push(("rayId".into(), r.clone().into_bytes())); }
            if let Some(e) = &enq { fields.push(("enqueuedAt".into(), e.clone().into_bytes())); }
            let job = parse_job(&fields, S, attempt, 1 << 20).unwrap();
            prop_assert_eq!(job.id.as_str(), id.as_str());
            prop_assert_eq!(job.job_type, ty);
            prop_assert_eq!(job.payload, payload);
            prop_assert_eq!(job.ray_id, ray);
            prop_assert_eq!(job.enqueued_at, enq);
            prop_assert_eq!(job.attempt, attempt);
        }

        #[test]
        fn arbitrary_entries_never_panic(
            fields in proptest::collection::vec(
                (prop_oneof![Just("jobId".to_owned()), Just("type".to_owned()), Just("payload".to_owned()), Just("rayId".to_owned()), "[a-z]{1,6}"],
                 proptest::collection::vec(any::<u8>(), 0..64)),
                0..8),
            max in 0usize..128,
        ) {
            let inc = to_incoming(S, "1-1", &fields, 1, max);
            if let Incoming::Job(d) = inc {
                prop_assert!(d.job.payload.is_object());
                prop_assert!(!d.job.job_type.is_empty());
            }
        }
    }
}
