//! A job's completion record on NATS: key `<jobId>` (encoded as [`super::token`]) in the KV
//! bucket `citadel-done`, the JSON `{"outcome":"completed","event","worker_id","at"}` where
//! `event` is the job's `end` event as it is (or will be) published, a string. The runner has it
//! written (`JobSource::record_success`, awaited: the bucket's stream stored it) **before** it
//! journals the success, so a worker that dies with the success in its journal never leaves the
//! job to run again elsewhere: every redelivery is looked up here first (`recheck`). The record
//! is never changed by a later event; it lives as long as a status (`--status-ttl`). This module
//! owns the record's format and its reads and writes; it must never settle a message nor decide
//! what a delivery becomes.

use std::time::SystemTime;

use async_nats::jetstream::kv;
use bytes::Bytes;
use tracing::debug;

use super::config::token;
use super::setup::map_err;
use crate::events::{rfc3339, EventData, WireEvent};
use crate::job::JobId;
use crate::source::SourceError;

/// The record's value for `end`, written by `worker` at `at`.
pub(crate) fn encode(end: &WireEvent, worker: &str, at: SystemTime) -> Bytes {
    serde_json::json!({
        "outcome": "completed",
        "event": end.to_json(),
        "worker_id": worker,
        "at": rfc3339(at),
    })
    .to_string()
    .into()
}

/// The recorded `end` event's JSON, as it was published; `None` for a value that is not a
/// record of this format.
pub(crate) fn decode(value: &[u8]) -> Option<Bytes> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    if v["outcome"] != "completed" {
        return None;
    }
    let event = v["event"].as_str()?;
    Some(Bytes::copy_from_slice(event.as_bytes()))
}

/// Writes the completion record of `end` (a job's coming `end` event) and returns once the
/// bucket's stream stored it.
pub(crate) async fn write(
    store: &kv::Store,
    end: &WireEvent,
    worker: &str,
) -> Result<(), SourceError> {
    if !matches!(end.data, EventData::End { .. }) {
        return Err(SourceError::Config(format!(
            "a completion record holds an `end` event, not `{}`",
            end.event_type()
        )));
    }
    store
        .put(token(&end.job_id), encode(end, worker, SystemTime::now()))
        .await
        .map_err(|e| map_err("writing the completion record", e))?;
    Ok(())
}

/// The recorded `end` of `job`, if it has a record.
pub(crate) async fn lookup(store: &kv::Store, job: &JobId) -> Result<Option<Bytes>, SourceError> {
    let value = store
        .get(token(job))
        .await
        .map_err(|e| map_err("reading the completion record", e))?;
    Ok(value.and_then(|v| {
        let end = decode(&v);
        if end.is_none() {
            debug!(job_id = %job, "the completion bucket holds a value that is no record; ignored");
        }
        end
    }))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::events::EventMeta;

    fn end(id: &str) -> WireEvent {
        let data = EventData::End {
            result: json!({"output": "done", "n": [1, 2]}),
        };
        WireEvent::new(
            JobId::new(id).unwrap(),
            EventMeta::new("n1", "node-1"),
            data,
        )
    }

    #[test]
    fn a_record_gives_back_the_end_as_it_was_published() {
        let e = end("j.1");
        let value = encode(&e, "node-1", SystemTime::UNIX_EPOCH);
        let v: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(v["worker_id"], "node-1");
        assert_eq!(v["at"], "1970-01-01T00:00:00.000Z");
        assert_eq!(decode(&value).unwrap(), Bytes::from(e.to_json()));
    }

    #[test]
    fn values_of_another_shape_are_no_record() {
        for bad in [
            &b"{nope"[..],
            br#"{"outcome":"failed","event":"{}"}"#,
            br#"{"outcome":"completed","event":{}}"#,
            br#"{"outcome":"completed"}"#,
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_values_never_panic(value in proptest::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode(&value);
        }
    }
}
