//! The control plane's records: the job and what a producer submits (the wire types of
//! `citadel_transports::control_plane::wire`, shared with the transports), how a worker settles
//! as the queue applies it, and a node. Plain data; it must never do I/O.

use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub use citadel_transports::control_plane::wire::{
    JobRecord, LeaseInfo, NewJob, Outcome, QueueState,
};

/// Unix milliseconds as RFC 3339 with milliseconds.
pub fn rfc3339_ms(ms: u64) -> String {
    citadel_transports::events::rfc3339(UNIX_EPOCH + Duration::from_millis(ms))
}

/// How a worker settles a lease (the control plane's side of a transport `Settlement`).
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseSettle {
    /// Done; the final state is `outcome`, else the lease's own terminal event, else success.
    Ack {
        outcome: Option<Outcome>,
    },
    Retry {
        delay: Duration,
        error: Option<String>,
    },
    DeadLetter {
        reason: String,
        errors: Vec<String>,
    },
    Release,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub name: String,
    pub ip_address: String,
    pub status: String,
    /// Unix milliseconds.
    pub last_seen_ms: u64,
    /// The last status message the node sent (docs/wire-format.md#heartbeat), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub report: Option<serde_json::Value>,
}
