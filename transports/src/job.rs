//! The job model: the identity of a job and what a producer sent with it. Values here are plain
//! data; they are encoded into the journal and onto the wire, so changing a field is a format
//! change.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The longest job id accepted. Producers use UUIDs and similar; anything far longer is a
/// malformed entry, not a job.
pub const MAX_JOB_ID_LEN: usize = 256;

/// The identity a producer gave a job (`jobId` on the wire). Stable across redeliveries, which is
/// what lets the journal recognise a job it has already run.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(String);

/// Why a string is not a usable job id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobIdError {
    #[error("job id is empty")]
    Empty,
    #[error("job id is {0} bytes long; at most {MAX_JOB_ID_LEN} are allowed")]
    TooLong(usize),
    #[error("job id contains a control character")]
    ControlCharacter,
}

impl JobId {
    /// Checks and wraps a producer's job id.
    pub fn new(id: impl Into<String>) -> Result<Self, JobIdError> {
        let id = id.into();
        if id.is_empty() {
            return Err(JobIdError::Empty);
        }
        if id.len() > MAX_JOB_ID_LEN {
            return Err(JobIdError::TooLong(id.len()));
        }
        if id.chars().any(char::is_control) {
            return Err(JobIdError::ControlCharacter);
        }
        Ok(Self(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "JobId({})", self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = JobIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// One job as delivered to this worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: JobId,
    /// The handler type (`type` on the wire), e.g. `llm_inference` or `SHELL_COMMAND`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The producer's payload: a JSON object.
    pub payload: serde_json::Value,
    /// The platform's trace id (`rayId`), when the producer sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ray_id: Option<String>,
    /// When the producer enqueued the job (`enqueuedAt`), as the producer wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueued_at: Option<String>,
    /// The attempt this delivery is, counting from 1.
    pub attempt: u32,
    /// Where the job came from: the transport and queue, e.g. `redis:jobs:v1:gpu-general`.
    pub source: String,
}

impl Job {
    /// A job's first delivery from `source`, without a trace id or an enqueue time.
    pub fn first_delivery(
        id: JobId,
        job_type: impl Into<String>,
        payload: serde_json::Value,
        source: impl Into<String>,
    ) -> Self {
        Self {
            id,
            job_type: job_type.into(),
            payload,
            ray_id: None,
            enqueued_at: None,
            attempt: 1,
            source: source.into(),
        }
    }

    /// A payload field as a string, whether the producer sent a string or a number.
    pub fn payload_str(&self, key: &str) -> Option<String> {
        match self.payload.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            serde_json::Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked() {
        assert!(JobId::new("j-1").is_ok());
        assert_eq!(JobId::new(""), Err(JobIdError::Empty));
        assert_eq!(JobId::new("a\nb"), Err(JobIdError::ControlCharacter));
        assert_eq!(
            JobId::new("x".repeat(MAX_JOB_ID_LEN + 1)),
            Err(JobIdError::TooLong(MAX_JOB_ID_LEN + 1))
        );
    }

    #[test]
    fn payload_fields_read_as_strings() {
        let job = Job {
            id: JobId::new("j").unwrap(),
            job_type: "sleep".into(),
            payload: serde_json::json!({"ms": 5, "name": "x", "nested": {}}),
            ray_id: None,
            enqueued_at: None,
            attempt: 1,
            source: "memory".into(),
        };
        assert_eq!(job.payload_str("ms").as_deref(), Some("5"));
        assert_eq!(job.payload_str("name").as_deref(), Some("x"));
        assert_eq!(job.payload_str("nested"), None);
        assert_eq!(job.payload_str("missing"), None);
    }
}
