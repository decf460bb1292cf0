//! Job events in the wire format of docs/wire-format.md#job-events: the `claimed` / `start` / `chunk` / `end` /
//! `error` / `cancelled` messages a producer reads on `stream:v1:{jobId}`. This module owns the
//! exact JSON shape and the status each event implies; it must never send anything (transports
//! do) nor decide when an event is due (the runtime does).

use std::time::SystemTime;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::job::{Job, JobId};

/// The wire format version written in every event.
pub const EVENT_VERSION: &str = "1.0";

/// Who emitted an event: copied into every event's `data.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EventMeta {
    pub node_id: String,
    pub node_name: String,
}

impl EventMeta {
    pub fn new(node_id: impl Into<String>, node_name: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            node_name: node_name.into(),
        }
    }
}

/// The type-specific part of an event (`data` without `meta`).
#[derive(Debug, Clone, PartialEq)]
pub enum EventData {
    Claimed {
        agent_version: String,
    },
    Start {
        message: String,
    },
    /// `index` counts from 0 per job.
    Chunk {
        content: String,
        index: u64,
    },
    End {
        result: Value,
    },
    Error {
        error: String,
        recoverable: bool,
    },
    Cancelled {
        reason: String,
    },
}

impl EventData {
    /// The event's `type` on the wire.
    pub fn event_type(&self) -> &'static str {
        match self {
            EventData::Claimed { .. } => "claimed",
            EventData::Start { .. } => "start",
            EventData::Chunk { .. } => "chunk",
            EventData::End { .. } => "end",
            EventData::Error { .. } => "error",
            EventData::Cancelled { .. } => "cancelled",
        }
    }

    /// Whether this event ends the job's event sequence.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventData::End { .. } | EventData::Error { .. } | EventData::Cancelled { .. }
        )
    }
}

/// The job status an event implies for the status hash (`job:{jobId}:status`), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStatus {
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Processing => "processing",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// One job event, ready to be encoded. Build it with [`WireEvent::new`] or
/// [`WireEvent::for_job`], then [`WireEvent::to_json`].
#[derive(Debug, Clone, PartialEq)]
pub struct WireEvent {
    pub job_id: JobId,
    pub ray_id: Option<String>,
    pub timestamp: SystemTime,
    pub data: EventData,
    pub meta: EventMeta,
}

#[derive(Serialize)]
struct Envelope<'a> {
    version: &'static str,
    #[serde(rename = "type")]
    event_type: &'static str,
    #[serde(rename = "jobId")]
    job_id: &'a str,
    #[serde(rename = "rayId", skip_serializing_if = "Option::is_none")]
    ray_id: Option<&'a str>,
    timestamp: String,
    data: DataOut<'a>,
}

/// An event's `data` object, `meta` included, written straight from the event: the same text
/// as [`WireEvent::data_json`] (keys in sorted order, as a JSON object map writes them) without
/// building and cloning a map first.
struct DataOut<'a>(&'a WireEvent);

impl Serialize for DataOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let meta = MetaOut(&self.0.meta);
        let mut m = s.serialize_map(None)?;
        match &self.0.data {
            EventData::Claimed { agent_version } => {
                m.serialize_entry("agent_version", agent_version)?;
                m.serialize_entry("meta", &meta)?;
            }
            EventData::Start { message } => {
                m.serialize_entry("message", message)?;
                m.serialize_entry("meta", &meta)?;
            }
            EventData::Chunk { content, index } => {
                m.serialize_entry("content", content)?;
                m.serialize_entry("index", index)?;
                m.serialize_entry("meta", &meta)?;
            }
            EventData::End { result } => {
                m.serialize_entry("meta", &meta)?;
                m.serialize_entry("result", result)?;
            }
            EventData::Error { error, recoverable } => {
                m.serialize_entry("error", error)?;
                m.serialize_entry("meta", &meta)?;
                m.serialize_entry("recoverable", recoverable)?;
            }
            EventData::Cancelled { reason } => {
                m.serialize_entry("meta", &meta)?;
                m.serialize_entry("reason", reason)?;
            }
        }
        m.end()
    }
}

struct MetaOut<'a>(&'a EventMeta);

impl Serialize for MetaOut<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("node_id", &self.0.node_id)?;
        m.serialize_entry("node_name", &self.0.node_name)?;
        m.end()
    }
}

impl WireEvent {
    /// An event stamped now, without a ray id.
    pub fn new(job_id: JobId, meta: EventMeta, data: EventData) -> Self {
        Self {
            job_id,
            ray_id: None,
            timestamp: SystemTime::now(),
            data,
            meta,
        }
    }

    /// An event about `job`, carrying its ray id.
    pub fn for_job(job: &Job, meta: EventMeta, data: EventData) -> Self {
        Self::new(job.id.clone(), meta, data).with_ray_id(job.ray_id.clone())
    }

    pub fn with_ray_id(mut self, ray_id: Option<String>) -> Self {
        self.ray_id = ray_id.filter(|r| !r.is_empty());
        self
    }

    pub fn at(mut self, timestamp: SystemTime) -> Self {
        self.timestamp = timestamp;
        self
    }

    pub fn event_type(&self) -> &'static str {
        self.data.event_type()
    }

    /// The status hash update this event implies: the status and, for failures, the error.
    pub fn status(&self) -> Option<(JobStatus, Option<&str>)> {
        match &self.data {
            // `claimed` already said `processing`; `start` and chunks change nothing.
            EventData::Claimed { .. } => Some((JobStatus::Processing, None)),
            EventData::Start { .. } | EventData::Chunk { .. } => None,
            EventData::End { .. } => Some((JobStatus::Completed, None)),
            EventData::Error { error, .. } => Some((JobStatus::Failed, Some(error))),
            EventData::Cancelled { .. } => Some((JobStatus::Cancelled, None)),
        }
    }

    /// The `data` object, `meta` included.
    pub fn data_json(&self) -> Map<String, Value> {
        let mut data = Map::new();
        match &self.data {
            EventData::Claimed { agent_version } => {
                data.insert("agent_version".into(), agent_version.clone().into());
            }
            EventData::Start { message } => {
                data.insert("message".into(), message.clone().into());
            }
            EventData::Chunk { content, index } => {
                data.insert("content".into(), content.clone().into());
                data.insert("index".into(), (*index).into());
            }
            EventData::End { result } => {
                data.insert("result".into(), result.clone());
            }
            EventData::Error { error, recoverable } => {
                data.insert("error".into(), error.clone().into());
                data.insert("recoverable".into(), (*recoverable).into());
            }
            EventData::Cancelled { reason } => {
                data.insert("reason".into(), reason.clone().into());
            }
        }
        let mut meta = Map::new();
        meta.insert("node_id".into(), self.meta.node_id.clone().into());
        meta.insert("node_name".into(), self.meta.node_name.clone().into());
        data.insert("meta".into(), Value::Object(meta));
        data
    }

    /// The event as the JSON text sent on the wire (keys in the order of docs/wire-format.md#job-events).
    pub fn to_json(&self) -> String {
        let envelope = Envelope {
            version: EVENT_VERSION,
            event_type: self.event_type(),
            job_id: self.job_id.as_str(),
            ray_id: self.ray_id.as_deref(),
            timestamp: rfc3339(self.timestamp),
            data: DataOut(self),
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| String::from("{}"))
    }
}

/// RFC 3339 in UTC with milliseconds, e.g. `2026-11-22T06:27:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use serde_json::json;

    use super::*;

    fn meta() -> EventMeta {
        EventMeta::new("node-1", "gpu-box")
    }

    #[test]
    fn the_data_is_written_as_its_json_object_would_be() {
        let all = [
            EventData::Claimed {
                agent_version: "0.1.0".into(),
            },
            EventData::Start {
                message: "go \"now\"\n".into(),
            },
            EventData::Chunk {
                content: "tok é".into(),
                index: 7,
            },
            EventData::End {
                result: json!({"z": [1, {"b": 2, "a": null}], "a": "x"}),
            },
            EventData::Error {
                error: "boom".into(),
                recoverable: true,
            },
            EventData::Cancelled {
                reason: "asked".into(),
            },
        ];
        for data in all {
            let ev = WireEvent::new(id(), meta(), data).with_ray_id(Some("r".into()));
            let text = serde_json::to_string(&DataOut(&ev)).unwrap();
            assert_eq!(text, Value::Object(ev.data_json()).to_string());
        }
    }

    fn id() -> JobId {
        JobId::new("j-1").unwrap()
    }

    #[test]
    fn envelope_is_exact() {
        let ev = WireEvent::new(
            id(),
            meta(),
            EventData::Chunk {
                content: "hi".into(),
                index: 3,
            },
        )
        .with_ray_id(Some("ray-9".into()))
        .at(UNIX_EPOCH + Duration::from_millis(1_700_000_000_123));
        let text = ev.to_json();
        assert!(text.starts_with(r#"{"version":"1.0","type":"chunk","jobId":"j-1","rayId":"ray-9","timestamp":"2023-11-14T22:13:20.123Z","data":"#));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            v["data"],
            json!({"content":"hi","index":3,"meta":{"node_id":"node-1","node_name":"gpu-box"}})
        );
    }

    #[test]
    fn ray_id_is_omitted_when_absent_or_empty() {
        for ray in [None, Some(String::new())] {
            let ev = WireEvent::new(
                id(),
                meta(),
                EventData::Start {
                    message: "go".into(),
                },
            )
            .with_ray_id(ray);
            let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
            assert!(v.get("rayId").is_none());
            assert_eq!(v["data"]["message"], "go");
        }
    }

    #[test]
    fn every_type_has_its_fields_and_status() {
        let cases = [
            (
                EventData::Claimed {
                    agent_version: "0.1.0".into(),
                },
                "claimed",
                json!({"agent_version":"0.1.0"}),
                Some(JobStatus::Processing),
            ),
            (
                EventData::End {
                    result: json!({"output":"x"}),
                },
                "end",
                json!({"result":{"output":"x"}}),
                Some(JobStatus::Completed),
            ),
            (
                EventData::Error {
                    error: "boom".into(),
                    recoverable: true,
                },
                "error",
                json!({"error":"boom","recoverable":true}),
                Some(JobStatus::Failed),
            ),
            (
                EventData::Cancelled {
                    reason: "user".into(),
                },
                "cancelled",
                json!({"reason":"user"}),
                Some(JobStatus::Cancelled),
            ),
        ];
        for (data, ty, mut fields, status) in cases {
            let ev = WireEvent::new(id(), meta(), data);
            assert_eq!(ev.status().map(|s| s.0), status);
            let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
            assert_eq!(v["type"], ty);
            fields["meta"] = json!({"node_id":"node-1","node_name":"gpu-box"});
            assert_eq!(v["data"], fields);
        }
    }
}
