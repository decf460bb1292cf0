//! The Redis transport's settings and the key names derived from them (docs/wire-format.md#job-entries). This module
//! owns validation and naming; it must never open a connection.

use std::time::Duration;

use crate::job::JobId;
use crate::routing::RouteFeed;
use crate::source::SourceError;

/// The default job stream.
pub const DEFAULT_STREAM: &str = "jobs:v1:gpu-general";
/// The default consumer group (the Go fleet uses `citadel-workers`).
pub const DEFAULT_GROUP: &str = "workers";
/// The default payload size limit: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// How long a job's event stream lives after its terminal event: 5 minutes.
pub const DEFAULT_EVENTS_GRACE: Duration = Duration::from_secs(300);
/// How long a job's status hash and completion record live: 7 days.
pub const DEFAULT_STATUS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The most entries a dead-letter stream keeps.
pub const DEFAULT_DLQ_MAX_LEN: u64 = 100_000;
/// How long a dead letter is kept: 30 days.
pub const DEFAULT_DLQ_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How the Redis source connects and behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    /// `redis://[user:pass@]host:port[/db]`.
    pub url: String,
    /// The job streams to consume (at least one); with `routes`, the set at the start.
    pub streams: Vec<String>,
    /// The live stream set with priorities (docs/transports.md#routing), when the worker derives
    /// its streams from its capabilities; `None`: `streams`, all of one priority, fixed.
    pub routes: Option<RouteFeed>,
    /// The consumer group; created with `MKSTREAM` when missing.
    pub group: String,
    /// This worker's stable consumer name (node name plus an instance id): a restarted worker
    /// with the same name recovers its own pending entries first.
    pub consumer: String,
    /// The `worker_id` written into status hashes and events' bookkeeping; defaults to
    /// `consumer`.
    pub worker_id: String,
    /// How long one blocking read waits for new entries.
    pub block: Duration,
    /// An entry idle for longer than this (its lease not extended) is taken by another worker.
    pub lease: Duration,
    /// How often a worker with free slots looks for expired leases and due retries.
    pub reclaim_interval: Duration,
    /// Entries whose `payload` is larger than this are malformed.
    pub max_payload_bytes: usize,
    /// The approximate cap of each job's event stream (`stream:v1:{jobId}:events`).
    pub events_maxlen: usize,
    /// How long a job's event stream lives after its last event while the job is unfinished.
    pub events_ttl: Duration,
    /// How long a job's event stream lives after its terminal event (`end`, a final `error`,
    /// `cancelled`): long enough for a late subscriber to read the outcome.
    pub events_grace: Duration,
    /// How long a job's status hash lives after its last update.
    pub status_ttl: Duration,
    /// How long a job's completion record (`job:{jobId}:done`) lives after its `end`: a copy of
    /// the job delivered later than this runs again.
    pub done_ttl: Duration,
    /// Keep acked entries in the job streams (for other consumer groups or an audit) and trim
    /// them every `trim_interval` below the oldest entry any group still needs; by default an
    /// acked or dead-lettered entry is deleted with its ack.
    pub keep_acked: bool,
    /// How often a worker with `keep_acked` trims its job streams.
    pub trim_interval: Duration,
    /// The most entries a dead-letter stream (`dlq:v1:…`) keeps: the oldest beyond are dropped
    /// (counted and logged) when a new one is added.
    pub dlq_max_len: u64,
    /// Dead letters older than this are dropped when a new one is added (zero: no age limit).
    pub dlq_max_age: Duration,
    /// The answer timeout of non-blocking commands (and of the health probe).
    pub command_timeout: Duration,
}

impl RedisConfig {
    /// Defaults (docs/wire-format.md#job-entries) for a consumer named `consumer`.
    pub fn new(url: impl Into<String>, consumer: impl Into<String>) -> Self {
        let consumer = consumer.into();
        Self {
            url: url.into(),
            streams: vec![DEFAULT_STREAM.to_owned()],
            routes: None,
            group: DEFAULT_GROUP.to_owned(),
            worker_id: consumer.clone(),
            consumer,
            block: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            reclaim_interval: Duration::from_secs(1),
            max_payload_bytes: DEFAULT_MAX_PAYLOAD,
            events_maxlen: 10_000,
            events_ttl: Duration::from_secs(3600),
            events_grace: DEFAULT_EVENTS_GRACE,
            status_ttl: DEFAULT_STATUS_TTL,
            done_ttl: DEFAULT_STATUS_TTL,
            keep_acked: false,
            trim_interval: Duration::from_secs(60),
            dlq_max_len: DEFAULT_DLQ_MAX_LEN,
            dlq_max_age: DEFAULT_DLQ_MAX_AGE,
            command_timeout: Duration::from_secs(5),
        }
    }

    pub fn validate(&self) -> Result<(), SourceError> {
        let bad = |m: &str| Err(SourceError::Config(m.to_owned()));
        if self.streams.is_empty() {
            return bad("at least one stream is needed");
        }
        if self.streams.iter().any(|s| s.is_empty()) {
            return bad("stream names must not be empty");
        }
        let mut unique = self.streams.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.streams.len() {
            return bad("a stream is listed twice");
        }
        if self.group.is_empty() {
            return bad("the consumer group must not be empty");
        }
        if self.consumer.is_empty() || self.consumer.chars().any(char::is_control) {
            return bad("the consumer name must be non-empty and printable");
        }
        if self.block < Duration::from_millis(1) {
            return bad("the block time must be at least 1 ms");
        }
        if self.lease < Duration::from_millis(10) {
            return bad("the lease must be at least 10 ms");
        }
        if self.reclaim_interval.is_zero() {
            return bad("the reclaim interval must not be zero");
        }
        if self.max_payload_bytes == 0 {
            return bad("the payload limit must not be zero");
        }
        if self.dlq_max_len == 0 {
            return bad("the dead-letter cap must be at least 1");
        }
        if self.trim_interval.is_zero() {
            return bad("the trim interval must not be zero");
        }
        Ok(())
    }

    /// The dead-letter stream of a job stream: `jobs:v1:X` → `dlq:v1:X`; any other name `N` →
    /// `dlq:v1:N`.
    pub fn dlq_stream(stream: &str) -> String {
        format!(
            "dlq:v1:{}",
            stream.strip_prefix("jobs:v1:").unwrap_or(stream)
        )
    }

    /// The `source` of a job read from `stream`.
    pub fn source_name(stream: &str) -> String {
        format!("redis:{stream}")
    }

    pub fn events_channel(job: &JobId) -> String {
        format!("stream:v1:{job}")
    }

    pub fn events_stream(job: &JobId) -> String {
        format!("stream:v1:{job}:events")
    }

    pub fn status_key(job: &JobId) -> String {
        format!("job:{job}:status")
    }

    pub fn cancel_key(job: &JobId) -> String {
        format!("job:cancelled:{job}")
    }

    /// The job's completion record (docs/wire-format.md#job-entries), written with its `end`.
    pub fn done_key(job: &JobId) -> String {
        format!("job:{job}:done")
    }

    /// The job's owner marker (docs/wire-format.md#job-entries): the consumer running it now.
    pub fn owner_key(job: &JobId) -> String {
        format!("job:{job}:owner")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_spec() {
        let c = RedisConfig::new("redis://127.0.0.1/", "node-a-1");
        assert_eq!(c.streams, vec!["jobs:v1:gpu-general"]);
        assert_eq!(c.group, "workers");
        assert_eq!(c.worker_id, "node-a-1");
        assert_eq!(c.lease, Duration::from_secs(60));
        assert_eq!(c.max_payload_bytes, 16 << 20);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn key_names() {
        let id = JobId::new("j1").unwrap();
        assert_eq!(
            RedisConfig::dlq_stream("jobs:v1:gpu-general"),
            "dlq:v1:gpu-general"
        );
        assert_eq!(
            RedisConfig::dlq_stream("jobs:v1:shell:org_1:node:n"),
            "dlq:v1:shell:org_1:node:n"
        );
        assert_eq!(RedisConfig::dlq_stream("custom"), "dlq:v1:custom");
        assert_eq!(RedisConfig::events_channel(&id), "stream:v1:j1");
        assert_eq!(RedisConfig::events_stream(&id), "stream:v1:j1:events");
        assert_eq!(RedisConfig::status_key(&id), "job:j1:status");
        assert_eq!(RedisConfig::cancel_key(&id), "job:cancelled:j1");
        assert_eq!(RedisConfig::done_key(&id), "job:j1:done");
        assert_eq!(RedisConfig::owner_key(&id), "job:j1:owner");
    }

    #[test]
    fn bad_configs_are_rejected() {
        let ok = RedisConfig::new("redis://x/", "c");
        let mut c = ok.clone();
        c.streams.clear();
        assert!(matches!(c.validate(), Err(SourceError::Config(_))));
        let mut c = ok.clone();
        c.consumer = String::new();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.streams = vec!["a".into(), "a".into()];
        assert!(c.validate().is_err());
        let mut c = ok;
        c.lease = Duration::ZERO;
        assert!(c.validate().is_err());
    }
}
