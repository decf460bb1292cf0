//! What a producer writes: one job of docs/wire-format.md#job-entries (`jobId`, `type`,
//! `payload`, and `enqueuedAt` when given) as the fields of a Redis stream entry or the JSON body
//! of a NATS message. Every producer (`RedisProducer`, `NatsProducer`, submit, the bench, the
//! chaos suite) builds its jobs from a [`JobEntry`]; this module never sends anything.

use serde_json::{json, Value};

/// One job entry as a producer writes it.
#[derive(Debug, Clone, Copy)]
pub struct JobEntry<'a> {
    pub job_id: &'a str,
    pub job_type: &'a str,
    /// A JSON object (written as its JSON text).
    pub payload: &'a Value,
    /// RFC 3339, e.g. [`crate::events::rfc3339`] of now; not written when `None`.
    pub enqueued_at: Option<&'a str>,
}

impl<'a> JobEntry<'a> {
    /// An entry without `enqueuedAt`.
    pub fn new(job_id: &'a str, job_type: &'a str, payload: &'a Value) -> Self {
        Self {
            job_id,
            job_type,
            payload,
            enqueued_at: None,
        }
    }

    /// The same entry with `enqueuedAt`.
    pub fn enqueued_at(self, at: &'a str) -> Self {
        Self {
            enqueued_at: Some(at),
            ..self
        }
    }

    /// The entry's fields, name then value, in the order they are written.
    pub(crate) fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("jobId", self.job_id.to_owned()),
            ("type", self.job_type.to_owned()),
            ("payload", self.payload.to_string()),
        ];
        if let Some(at) = self.enqueued_at {
            fields.push(("enqueuedAt", at.to_owned()));
        }
        fields
    }

    /// The JSON body of a NATS job message: the same fields, `payload` as an object.
    pub fn to_json(&self) -> Value {
        let mut body =
            json!({"jobId": self.job_id, "type": self.job_type, "payload": self.payload});
        if let Some(at) = self.enqueued_at {
            body["enqueuedAt"] = at.into();
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_the_wire_fields_in_order() {
        let payload = serde_json::json!({"msg": "hi"});
        let e = JobEntry::new("j-1", "echo", &payload);
        let names: Vec<_> = e.fields().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["jobId", "type", "payload"]);
        let fields = e.enqueued_at("2026-12-06T00:00:00.000Z").fields();
        assert_eq!(fields[2].1, r#"{"msg":"hi"}"#);
        assert_eq!(
            fields[3],
            ("enqueuedAt", "2026-12-06T00:00:00.000Z".to_owned())
        );
    }

    #[test]
    fn the_nats_body_carries_the_same_fields() {
        let payload = json!({"msg": "hi"});
        let e = JobEntry::new("j-1", "echo", &payload);
        assert_eq!(
            e.to_json(),
            json!({"jobId": "j-1", "type": "echo", "payload": {"msg": "hi"}})
        );
        assert_eq!(e.enqueued_at("t").to_json()["enqueuedAt"], "t");
    }
}
