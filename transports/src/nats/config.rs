//! The NATS transport's settings and every subject, stream, bucket and key name derived from them.
//! This module owns validation and naming (including how a job id that is not a valid subject
//! token or key is encoded); it must never open a connection.

use std::path::PathBuf;
use std::time::Duration;

use crate::job::JobId;
use crate::routing::RouteFeed;
use crate::source::SourceError;

/// The default job stream.
pub const DEFAULT_STREAM: &str = "JOBS";
/// The subjects the default job stream holds.
pub const DEFAULT_STREAM_SUBJECTS: &str = "jobs.v1.>";
/// The default job subject.
pub const DEFAULT_SUBJECT: &str = "jobs.v1.gpu-general";
/// The default durable pull consumer (shared by every worker of a fleet).
pub const DEFAULT_CONSUMER: &str = "workers";
/// The dead-letter stream and its subjects.
pub const DLQ_STREAM: &str = "DLQ";
pub const DLQ_SUBJECTS: &str = "dlq.v1.>";
/// The job events stream (late readers resume from it) and its subjects.
pub const EVENTS_STREAM: &str = "EVENTS";
pub const EVENTS_SUBJECTS: &str = "stream.v1.>";
/// The key-value buckets of cancellations and job statuses.
pub const CANCEL_BUCKET: &str = "citadel-cancel";
pub const STATUS_BUCKET: &str = "citadel-status";
/// The key-value bucket counting releases per message (see `release`).
pub const RELEASED_BUCKET: &str = "citadel-released";
/// The key-value bucket of completion records: a job's success, written before the worker
/// journals it (see `record`).
pub const DONE_BUCKET: &str = "citadel-done";
/// The default message size limit: 16 MiB (nats-server's own limit is usually 1 MiB).
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// How the NATS source connects and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// `nats://[user:pass@]host:port` (comma separated for several servers).
    pub url: String,
    /// A `.creds` file (JWT and NKey seed) when the server wants one.
    pub credentials_file: Option<PathBuf>,
    /// The JetStream stream holding the job subjects; created (work-queue retention, file
    /// storage) when missing.
    pub stream: String,
    /// The subjects the job stream is created with (only used when it is created).
    pub stream_subjects: Vec<String>,
    /// The job subjects to consume (at least one); unused when `routes` is set.
    pub subjects: Vec<String>,
    /// The live subject set derived from the node's capabilities (docs/transports.md#routing):
    /// `(Redis stream name, priority)` pairs, read as their subjects
    /// ([`crate::routing::nats_subject_of`]). When set, `subjects` is not used.
    pub routes: Option<RouteFeed>,
    /// The durable pull consumer; one per subject when several are consumed (see
    /// [`NatsConfig::durable_for`]).
    pub consumer: String,
    /// The `worker_id` written into dead letters and statuses, and the connection name.
    pub worker_id: String,
    /// The consumer's `ack_wait`: a delivery not acked or extended for this long goes to
    /// another worker.
    pub lease: Duration,
    /// How long one pull request waits for messages.
    pub block: Duration,
    /// Messages larger than this are malformed.
    pub max_payload_bytes: usize,
    /// Events kept per job in the events stream.
    pub events_max_per_job: i64,
    /// How long the events stream keeps an event.
    pub events_ttl: Duration,
    /// How long a status, a completion record or a cancellation is kept in its bucket.
    pub status_ttl: Duration,
    /// The most dead letters the `DLQ` stream keeps when this worker creates it (`max_msgs`,
    /// discard old: the oldest go first).
    pub dlq_max_msgs: i64,
    /// How long the `DLQ` stream keeps a dead letter when this worker creates it (`max_age`;
    /// zero: no age limit).
    pub dlq_max_age: Duration,
    /// The answer timeout of requests (and of the health probe).
    pub command_timeout: Duration,
}

impl NatsConfig {
    /// Defaults for a worker named `worker_id`.
    pub fn new(url: impl Into<String>, worker_id: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            credentials_file: None,
            stream: DEFAULT_STREAM.to_owned(),
            stream_subjects: vec![DEFAULT_STREAM_SUBJECTS.to_owned()],
            subjects: vec![DEFAULT_SUBJECT.to_owned()],
            routes: None,
            consumer: DEFAULT_CONSUMER.to_owned(),
            worker_id: worker_id.into(),
            lease: Duration::from_secs(60),
            block: Duration::from_secs(1),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            events_max_per_job: 10_000,
            events_ttl: Duration::from_secs(3600),
            status_ttl: Duration::from_secs(7 * 24 * 3600),
            dlq_max_msgs: 100_000,
            dlq_max_age: Duration::from_secs(30 * 24 * 3600),
            command_timeout: Duration::from_secs(5),
        }
    }

    pub fn validate(&self) -> Result<(), SourceError> {
        let bad = |m: String| Err(SourceError::Config(m));
        if self.subjects.is_empty() {
            return bad("at least one job subject is needed".into());
        }
        for s in self.subjects.iter().chain(&self.stream_subjects) {
            if !valid_subject(s, true) {
                return bad(format!("`{s}` is not a valid NATS subject"));
            }
        }
        for s in &self.subjects {
            if s.contains('*') || s.contains('>') {
                return bad(format!(
                    "job subject `{s}` has a wildcard; list the subjects to consume"
                ));
            }
        }
        let mut unique = self.subjects.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.subjects.len() {
            return bad("a job subject is listed twice".into());
        }
        if !valid_name(&self.stream) {
            return bad(format!("`{}` is not a valid stream name", self.stream));
        }
        if !valid_name(&self.consumer) {
            return bad(format!("`{}` is not a valid consumer name", self.consumer));
        }
        if self.worker_id.is_empty() || self.worker_id.chars().any(char::is_control) {
            return bad("the worker id must be non-empty and printable".into());
        }
        if self.lease < Duration::from_secs(1) {
            return bad("the lease (ack_wait) must be at least 1s".into());
        }
        if self.block < Duration::from_millis(10) {
            return bad("the pull wait must be at least 10ms".into());
        }
        if self.max_payload_bytes == 0 {
            return bad("the payload limit must not be zero".into());
        }
        Ok(())
    }

    /// The durable consumer that reads `subject`: the configured name when one subject is
    /// consumed, else `{consumer}-{subject with dots as underscores}`. Every worker of a fleet
    /// must list the same subjects (as every Redis worker must use the same group).
    ///
    /// With `routes`, the name depends on the subject alone, so every node reading a subject
    /// shares its one consumer whatever else it reads: the default subject keeps the configured
    /// name, any other is `{consumer}-{subject}` with `.` as `_` and every byte outside
    /// `A-Z a-z 0-9 -` as `=` and its hex (`_` → `=5f`), so two subjects never share a name.
    pub fn durable_for(&self, subject: &str) -> String {
        if self.routes.is_some() {
            return routed_durable(&self.consumer, subject);
        }
        if self.subjects.len() == 1 {
            self.consumer.clone()
        } else {
            format!(
                "{}-{}",
                self.consumer,
                subject.replace(['.', '*', '>'], "_")
            )
        }
    }

    /// The dead-letter subject of a job subject: `jobs.v1.X` → `dlq.v1.X`; any other `N` →
    /// `dlq.v1.N`.
    pub fn dlq_subject(subject: &str) -> String {
        format!(
            "dlq.v1.{}",
            subject.strip_prefix("jobs.v1.").unwrap_or(subject)
        )
    }

    /// The `source` of a job read from `subject`.
    pub fn source_name(subject: &str) -> String {
        format!("nats:{subject}")
    }

    /// The core subject a job's events are published on (and the events stream keeps).
    pub fn events_subject(job: &JobId) -> String {
        format!("stream.v1.{}", token(job))
    }

    /// The subject a node's heartbeat goes to.
    pub fn status_subject(node_id: &str) -> String {
        format!("node.status.{}", token_of(node_id))
    }
}

fn routed_durable(consumer: &str, subject: &str) -> String {
    if subject == DEFAULT_SUBJECT {
        return consumer.to_owned();
    }
    let mut out = format!("{consumer}-");
    for b in subject.bytes() {
        match b {
            b'.' => out.push('_'),
            b if b.is_ascii_alphanumeric() || b == b'-' => out.push(char::from(b)),
            b => out.push_str(&format!("={b:02x}")),
        }
    }
    out
}

/// A job id as a subject token and key-value key: ids made only of `A-Z a-z 0-9 _ -` are used
/// as they are; any other id becomes `=` followed by the lowercase hex of its UTF-8 bytes
/// (`a.b` → `=612e62`). `=` never starts a plain id, so two ids never share a token.
pub fn token(job: &JobId) -> String {
    token_of(job.as_str())
}

pub(crate) fn token_of(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(1 + 2 * s.len());
    out.push('=');
    for b in s.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A subject: dot-separated non-empty tokens without whitespace; wildcards only when allowed.
pub(crate) fn valid_subject(s: &str, wildcards: bool) -> bool {
    !s.is_empty()
        && s.split('.').enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.chars().any(|c| c.is_whitespace() || c.is_control())
                && (wildcards && (t == "*" || (t == ">" && i == s.split('.').count() - 1))
                    || !t.contains(['*', '>']))
        })
}

/// A stream or consumer name: no dots, wildcards, slashes or whitespace.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| {
            !c.is_whitespace() && !c.is_control() && !matches!(c, '.' | '*' | '>' | '/' | '\\')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names() {
        let c = NatsConfig::new("nats://127.0.0.1:4222", "node-a-1");
        assert!(c.validate().is_ok());
        assert_eq!(c.durable_for(DEFAULT_SUBJECT), "workers");
        assert_eq!(
            NatsConfig::dlq_subject("jobs.v1.gpu-general"),
            "dlq.v1.gpu-general"
        );
        assert_eq!(NatsConfig::dlq_subject("custom.x"), "dlq.v1.custom.x");
        let id = JobId::new("j-1").unwrap();
        assert_eq!(NatsConfig::events_subject(&id), "stream.v1.j-1");
        assert_eq!(NatsConfig::status_subject("n.1"), "node.status.=6e2e31");
        let mut two = c.clone();
        two.subjects.push("jobs.v1.cpu-general".into());
        assert_eq!(
            two.durable_for("jobs.v1.cpu-general"),
            "workers-jobs_v1_cpu-general"
        );
    }

    #[test]
    fn routed_consumers_are_named_by_their_subject_alone() {
        let (tx, rx) = tokio::sync::watch::channel(Vec::new());
        let mut c = NatsConfig::new("nats://x", "w");
        c.routes = Some(RouteFeed::new(rx));
        assert_eq!(c.durable_for(DEFAULT_SUBJECT), "workers");
        assert_eq!(
            c.durable_for("jobs.v1.tag.model.llama-3_1-8b"),
            "workers-jobs_v1_tag_model_llama-3=5f1-8b"
        );
        // `tag:a.b` and `tag:a:b` have the subjects `…a_b` and `…a.b`: two names.
        assert_ne!(
            c.durable_for("jobs.v1.tag.a_b"),
            c.durable_for("jobs.v1.tag.a.b")
        );
        assert!(valid_name(&c.durable_for("jobs.v1.node.n/1 x")));
        drop(tx);
    }

    #[test]
    fn tokens_never_collide_and_are_valid() {
        let ids = ["abc", "a.b", "a b", "a*>", "=61", "日本", "a_b-C9"];
        let tokens: Vec<String> = ids
            .iter()
            .map(|i| token(&JobId::new(*i).unwrap()))
            .collect();
        assert_eq!(tokens[0], "abc");
        assert_eq!(tokens[1], "=612e62");
        assert_eq!(tokens[6], "a_b-C9");
        let mut unique = tokens.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        for t in &tokens {
            assert!(valid_subject(t, false), "{t}");
            assert!(t
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c)));
        }
    }

    #[test]
    fn bad_configs_are_rejected() {
        let ok = NatsConfig::new("nats://x", "w");
        let cases: [fn(&mut NatsConfig); 8] = [
            |c| c.subjects.clear(),
            |c| c.subjects = vec!["jobs..x".into()],
            |c| c.subjects = vec!["jobs.v1.*".into()],
            |c| c.subjects = vec!["a".into(), "a".into()],
            |c| c.stream = "a.b".into(),
            |c| c.consumer = String::new(),
            |c| c.lease = Duration::from_millis(10),
            |c| c.stream_subjects = vec!["a.>.b".into()],
        ];
        for (i, f) in cases.iter().enumerate() {
            let mut c = ok.clone();
            f(&mut c);
            assert!(
                matches!(c.validate(), Err(SourceError::Config(_))),
                "case {i}"
            );
        }
        assert!(valid_subject("jobs.v1.>", true));
    }
}
