//! The journal's record: one [`JobEvent`] per lifecycle step of a job (docs/journal.md). This type is the
//! on-disk format (behind the codec's version byte) and the `export` format, so it changes only
//! with a new format version.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use citadel_transports::{Job, JobId};
use serde::{Deserialize, Serialize};

/// One recorded step in a job's life.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// Position in the journal: strictly increasing, never reused (not even after compaction).
    pub seq: u64,
    /// Wall-clock time of the append, milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub job_id: JobId,
    /// The transport that delivered the job (`redis`, `nats`, `nexus`, `websocket`, `memory`).
    pub transport: String,
    /// The transport's id for this delivery (a stream entry id, a NATS sequence…), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery_id: Option<String>,
    pub event: EventKind,
}

/// What happened. Adjacently tagged, so the JSON export reads `{"type":"started","data":{…}}`
/// and the MessagePack decoder never has to buffer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data", rename_all = "snake_case")]
pub enum EventKind {
    /// A delivery of the job reached this worker.
    Received {
        job: Job,
    },
    /// A handler began working on `attempt` (counting from 1).
    Started {
        attempt: u32,
    },
    /// A checkpoint of streamed output: chunks up to `index` were published. Not every chunk is
    /// journaled, only enough to say how far a job got.
    Chunk {
        index: u64,
    },
    Succeeded {
        result: serde_json::Value,
    },
    Failed {
        error: String,
        retryable: bool,
    },
    Cancelled {
        reason: String,
    },
    TimedOut {
        after_ms: u64,
    },
    /// The worker stopped (crash, drain deadline) while the attempt ran; it will be delivered again.
    Interrupted {
        reason: String,
    },
    Acked,
    Retried {
        delay_ms: u64,
    },
    DeadLettered {
        reason: String,
    },
    Released,
    /// Acknowledged without running, e.g. a job addressed to another node.
    Skipped {
        reason: String,
    },
}

impl EventKind {
    /// The snake_case name used in the export, the CLI and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Received { .. } => "received",
            EventKind::Started { .. } => "started",
            EventKind::Chunk { .. } => "chunk",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
            EventKind::Cancelled { .. } => "cancelled",
            EventKind::TimedOut { .. } => "timed_out",
            EventKind::Interrupted { .. } => "interrupted",
            EventKind::Acked => "acked",
            EventKind::Retried { .. } => "retried",
            EventKind::DeadLettered { .. } => "dead_lettered",
            EventKind::Released => "released",
            EventKind::Skipped { .. } => "skipped",
        }
    }

    /// True for the settlements: what the worker told (or is about to tell) the transport.
    pub fn is_settlement(&self) -> bool {
        matches!(
            self,
            EventKind::Acked
                | EventKind::Retried { .. }
                | EventKind::DeadLettered { .. }
                | EventKind::Released
                | EventKind::Skipped { .. }
        )
    }

    /// True for the events that end an attempt (exactly one per attempt).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Succeeded { .. }
                | EventKind::Failed { .. }
                | EventKind::Cancelled { .. }
                | EventKind::TimedOut { .. }
                | EventKind::Interrupted { .. }
        )
    }
}

/// What a caller hands to [`crate::Journal::append`]: an event without the sequence number and
/// time, which the journal assigns.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub job_id: JobId,
    pub transport: String,
    pub delivery_id: Option<String>,
    pub event: EventKind,
}

impl NewEvent {
    pub fn new(job_id: JobId, transport: impl Into<String>, event: EventKind) -> Self {
        Self {
            job_id,
            transport: transport.into(),
            delivery_id: None,
            event,
        }
    }

    pub fn delivery(mut self, id: impl Into<String>) -> Self {
        self.delivery_id = Some(id.into());
        self
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds, for people and exports.
pub fn format_ms(at_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(at_ms)).to_string()
}
