//! The frames of the WebSocket job push (`GET /api/v1/ws` on a citadel control plane): JSON text
//! frames with a `type` field. This is the one definition both ends use (the control plane in the
//! `citadel` crate serializes [`ServerFrame`] and parses [`ClientFrame`]; the worker does the
//! opposite). Plain data only: this module must never do I/O or decide what happens to a job.
//!
//! Worker → server: `hello` (once, first), `credit` (more free slots), `stop` (no more pushes),
//! and requests that carry an `id` the server answers with `ok` or `error`: `settle`, `renew`,
//! `event`, `ping`. Server → worker: `welcome` (the answer to `hello`), `job` (a leased job, only
//! while credit is left), `cancel` (a job this worker holds was cancelled), `ok`, `error`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The path of the job push on the control plane.
pub const PATH: &str = "/api/v1/ws";

/// What a worker sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Who the worker is and the lease it wants on each pushed job.
    Hello {
        worker: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// `credit` more jobs may be pushed (free slots; credits add up).
    Credit { credit: u32 },
    /// Push nothing more (the worker is shutting down); answered with `ok`.
    Stop { id: u64 },
    /// Settles a lease, with the fields of `POST /api/v1/jobs/{id}/settle`.
    Settle {
        id: u64,
        job: String,
        lease_id: String,
        action: String,
        #[serde(default)]
        delay_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        errors: Vec<String>,
        /// How the attempt ended (`end`, `error`, `cancelled`): an `ack`'s final state.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        outcome: Option<String>,
    },
    /// Restarts a lease; the answer says whether cancellation was requested.
    Renew {
        id: u64,
        job: String,
        lease_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_ms: Option<u64>,
    },
    /// A job event (docs/wire-format.md#job-events JSON object).
    Event {
        id: u64,
        job: String,
        /// The lease the event belongs to (the job's current one, else it is refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_id: Option<String>,
        event: Value,
    },
    /// A round trip, for health probes.
    Ping { id: u64 },
}

/// What the control plane sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        worker: String,
        lease_ms: u64,
        version: String,
    },
    /// A job leased to this worker (the job record of `POST /api/v1/jobs/claim`). `again`: a
    /// job already leased to this worker id, sent again after `hello` (its push may have been
    /// lost with the last connection); it does not use credit.
    Job {
        job: Value,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        again: bool,
    },
    /// The producer cancelled a job this worker holds.
    Cancel { job: String },
    Ok {
        id: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lease_expires_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cancel_requested: Option<bool>,
    },
    /// A request failed (`id` set) or a frame could not be read (`id` absent). `status` is the
    /// HTTP status the same failure gets from the HTTP API (400, 404, 409, 500).
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        status: u16,
        error: String,
    },
}

impl ServerFrame {
    pub fn ok(id: u64) -> Self {
        ServerFrame::Ok {
            id,
            lease_expires_ms: None,
            cancel_requested: None,
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ClientFrame {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The request id of a frame that is answered, for error frames about unreadable frames.
    pub fn id_of(text: &str) -> Option<u64> {
        serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn frames_have_their_documented_shape() {
        let f = ClientFrame::Settle {
            id: 7,
            job: "j".into(),
            lease_id: "L".into(),
            action: "retry".into(),
            delay_ms: 1000,
            reason: None,
            errors: vec!["boom".into()],
            outcome: None,
        };
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            json!({"type":"settle","id":7,"job":"j","lease_id":"L","action":"retry","delay_ms":1000,"errors":["boom"]})
        );
        let back: ClientFrame = serde_json::from_str(&f.to_text()).unwrap();
        assert_eq!(back, f);
        assert_eq!(
            serde_json::from_str::<ClientFrame>(r#"{"type":"credit","credit":4}"#).unwrap(),
            ClientFrame::Credit { credit: 4 }
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"credit","credits":4}"#).is_err());
        assert_eq!(ServerFrame::ok(3).to_text(), r#"{"type":"ok","id":3}"#);
        assert_eq!(ClientFrame::id_of(r#"{"type":"nope","id":9}"#), Some(9));
    }
}
