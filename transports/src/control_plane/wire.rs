//! The control plane's wire types, defined once: the job record (as stored, as the API shows it,
//! as a claim answers and as the WebSocket pushes it), what a producer submits, and the bodies
//! of the claim, lease renewal and settlement requests (docs/control-plane.md#api-reference). The
//! control plane (`citadel-nexus`) serves them and the nexus and websocket transports send and
//! read them. Plain data with serde; it must never do I/O.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// How an attempt ended, as its worker reported it (its terminal event, or its settlement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    End,
    Error,
    Cancelled,
}

impl Outcome {
    /// The outcome a job event of type `ty` reports, if it is a terminal one.
    pub fn of_event(ty: &str) -> Option<Self> {
        match ty {
            "end" => Some(Outcome::End),
            "error" => Some(Outcome::Error),
            "cancelled" => Some(Outcome::Cancelled),
            _ => None,
        }
    }

    /// The final state of an acknowledged job with this outcome.
    pub fn state(self) -> QueueState {
        match self {
            Outcome::End => QueueState::Succeeded,
            Outcome::Error => QueueState::Failed,
            Outcome::Cancelled => QueueState::Cancelled,
        }
    }
}

/// Where a control-plane job stands in the queue (not the worker journal's lifecycle state,
/// `citadel_journal::JobState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueState {
    Queued,
    Leased,
    Succeeded,
    Failed,
    Cancelled,
    Dead,
}

impl QueueState {
    pub fn is_final(self) -> bool {
        !matches!(self, QueueState::Queued | QueueState::Leased)
    }

    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(Value::String(s.to_string())).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseInfo {
    pub id: String,
    pub worker: String,
    /// Unix milliseconds.
    pub expires_ms: u64,
    /// The lease's length as last made durable: after a restart the control plane gives the
    /// lease this long again from the restart (renewals are not flushed; docs/control-plane.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_ms: Option<u64>,
}

/// One job, as stored and as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Map<String, Value>,
    #[serde(rename = "rayId", default, skip_serializing_if = "Option::is_none")]
    pub ray_id: Option<String>,
    /// The organization whose nodes may claim it (docs/control-plane.md#credentials-and-organizations).
    #[serde(default = "default_org")]
    pub org: String,
    pub state: QueueState,
    /// Deliveries so far.
    pub attempts: u32,
    pub max_attempts: u32,
    /// Whether the producer gave `maxAttempts` at submit (not in the payload): the transports
    /// then hand it to the runner in the payload, so the worker keeps to the same limit.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub max_attempts_given: bool,
    pub created_at: String,
    pub updated_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseInfo>,
    #[serde(default)]
    pub cancel_requested: bool,
    /// `end.data.result` of the last attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// The last error reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The `output` of a plain `POST /jobs/{id}/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_reason: Option<String>,
    /// The type of the last terminal event (`end`, `error`, `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    /// The lease that reported `outcome` (none: reported without a lease).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_lease: Option<String>,
    /// The lease whose settlement made the job final (its repeat is answered again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_by: Option<String>,
    /// Events recorded so far (their ids are 0..events).
    #[serde(default)]
    pub events: u64,
    /// Tags a node must have to claim it (docs/transports.md#routing).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires: Vec<String>,
    /// The only node (by name) that may claim it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Submission order.
    #[serde(default)]
    pub seq: u64,
    #[serde(default)]
    pub not_before_ms: u64,
}

impl JobRecord {
    /// A job just submitted, waiting in the queue.
    pub fn new(id: String, new: NewJob, max_attempts: u32, seq: u64, now: String) -> Self {
        JobRecord {
            id,
            max_attempts_given: new.max_attempts.is_some(),
            requires: new.requires,
            target_node: new.target_node.filter(|s| !s.is_empty()),
            job_type: new.job_type,
            payload: new.payload,
            ray_id: new.ray_id.filter(|s| !s.is_empty()),
            org: new
                .org
                .filter(|s| !s.is_empty())
                .unwrap_or_else(default_org),
            state: QueueState::Queued,
            attempts: 0,
            max_attempts,
            created_at: now.clone(),
            updated_at: now,
            lease: None,
            cancel_requested: false,
            result: None,
            error: None,
            output: None,
            errors: Vec::new(),
            dead_reason: None,
            outcome: None,
            outcome_lease: None,
            settled_by: None,
            events: 0,
            seq,
            not_before_ms: 0,
        }
    }

    /// The outcome `lease` itself reported, if any.
    pub fn outcome_of(&self, lease: &str) -> Option<Outcome> {
        self.outcome
            .filter(|_| self.outcome_lease.as_deref() == Some(lease))
    }
}

/// What a producer submits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub payload: Map<String, Value>,
    #[serde(rename = "rayId", default)]
    pub ray_id: Option<String>,
    #[serde(rename = "maxAttempts", default)]
    pub max_attempts: Option<u32>,
    /// The organization whose nodes may claim it (default: [`DEFAULT_ORG`]).
    #[serde(default)]
    pub org: Option<String>,
    /// Tags a node must have to claim it.
    #[serde(default)]
    pub requires: Vec<String>,
    /// The only node (by name) that may claim it.
    #[serde(default)]
    pub target_node: Option<String>,
}

impl JobRecord {
    /// Whether a node with `tags`, named `node`, may claim this job.
    pub fn fits(&self, tags: &[String], node: Option<&str>) -> bool {
        self.requires.iter().all(|t| tags.contains(t))
            && self.target_node.as_deref().is_none_or(|n| node == Some(n))
    }
}

/// The organization of jobs submitted without one and of nodes approved without one.
pub const DEFAULT_ORG: &str = "default";

fn default_org() -> String {
    DEFAULT_ORG.to_string()
}

/// `POST /api/v1/jobs/claim`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    pub worker: String,
    #[serde(default = "one")]
    pub max: usize,
    /// Long-poll: how long to wait for a job.
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The claiming node's routing tags: jobs that require others are left to other nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The claiming node's name, for jobs sent to one node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The `data` of a `claimed` job event (docs/wire-format.md#job-events) the control plane
    /// records for each job it hands out, with the claim: the worker then sends no `claimed`
    /// of its own. Only to a plane whose health lists [`CLAIM_EVENT_FEATURE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed: Option<Value>,
}

/// The `/api/v1/health` feature saying a claim may ask for the `claimed` events
/// ([`ClaimRequest::claimed`]).
pub const CLAIM_EVENT_FEATURE: &str = "claim_event";

fn one() -> usize {
    1
}

/// The answer to a claim: the leased jobs (kept as JSON here, so one unreadable record becomes
/// one malformed delivery rather than a failed claim).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ClaimResponse {
    #[serde(default)]
    pub jobs: Vec<Value>,
}

/// `POST /api/v1/jobs/{id}/lease`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenewRequest {
    pub lease_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
}

/// The answer to a lease renewal.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub lease_expires_ms: Option<u64>,
    #[serde(default)]
    pub cancel_requested: bool,
}

/// `POST /api/v1/jobs/{id}/settle`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettleRequest {
    pub lease_id: String,
    /// `ack`, `retry`, `dead_letter` or `release`.
    pub action: String,
    #[serde(default)]
    pub delay_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// How the attempt ended (`end`, `error`, `cancelled`): the final state of an `ack`, even
    /// when the terminal event itself never arrived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// The attempt's terminal job event (docs/wire-format.md#job-events), recorded under the
    /// same lease just before the settlement and made durable with it: one request and one
    /// flush instead of two. Only sent to a control plane whose health lists
    /// [`SETTLE_EVENT_FEATURE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<Value>,
    /// The attempt's earlier job events the worker has not sent yet (its `start`), recorded in
    /// order under the same lease before [`SettleRequest::event`] and made durable with the
    /// settlement. Only sent to a control plane whose health lists [`SETTLE_EVENTS_FEATURE`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<Value>,
}

/// The `features` entry of `GET /api/v1/health` saying a settlement may carry its terminal
/// event ([`SettleRequest::event`]).
pub const SETTLE_EVENT_FEATURE: &str = "settle_event";

/// The `features` entry of `GET /api/v1/health` saying a settlement may also carry the attempt's
/// earlier events not sent yet ([`SettleRequest::events`]).
pub const SETTLE_EVENTS_FEATURE: &str = "settle_events";

/// The `features` entry of `GET /api/v1/health` saying the plane takes several jobs' events and
/// settlements in one request ([`BatchRequest`], `POST /api/v1/jobs/batch`).
pub const BATCH_FEATURE: &str = "batch";

/// The most operations one [`BatchRequest`] may carry.
pub const MAX_BATCH: usize = 256;

/// `POST /api/v1/jobs/batch`: operations on several jobs, applied in order and made durable by
/// one flush before the answer. Each succeeds or fails on its own ([`BatchResponse`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub ops: Vec<BatchOp>,
}

/// One operation of a [`BatchRequest`]: what `POST /api/v1/jobs/{job}/events?lease_id=` (each
/// event in order) or `POST /api/v1/jobs/{job}/settle` does on its own.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOp {
    /// Job events (docs/wire-format.md#job-events) recorded in order under the job's lease.
    Events {
        job: String,
        lease_id: String,
        events: Vec<Value>,
    },
    /// The job's settlement, with the events it carries.
    Settle { job: String, settle: SettleRequest },
}

/// The answer to a [`BatchRequest`]: one result per operation, in the same order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BatchResponse {
    pub results: Vec<BatchResult>,
}

/// How one operation went: the HTTP status it would have had on its own, and its error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
