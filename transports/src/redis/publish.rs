//! Job events on Redis (SPEC §9.2): one pipeline that `PUBLISH`es the event on
//! `stream:v1:{jobId}`, appends it to the capped, expiring stream `stream:v1:{jobId}:events`
//! (fields `type` and `event`, so a late subscriber can resume from an index or an entry id),
//! and updates the status hash `job:{jobId}:status`. This module must never decide which event
//! is due.

use redis::aio::ConnectionManager;
use tracing::trace;

use super::config::RedisConfig;
use super::conn::map_err;
use crate::events::{rfc3339, EventData, JobStatus, WireEvent};
use crate::source::SourceError;

pub(crate) fn pipeline(cfg: &RedisConfig, event: &WireEvent) -> redis::Pipeline {
    let json = event.to_json();
    let id = &event.job_id;
    let events = RedisConfig::events_stream(id);
    let mut p = redis::pipe();
    p.cmd("PUBLISH")
        .arg(RedisConfig::events_channel(id))
        .arg(&json)
        .ignore();
    p.cmd("XADD")
        .arg(&events)
        .arg("MAXLEN")
        .arg("~")
        .arg(cfg.events_maxlen)
        .arg("*")
        .arg("type")
        .arg(event.event_type())
        .arg("event")
        .arg(&json)
        .ignore();
    // The stream's time to live runs from the last refresh: at the claim, at the end, and every
    // 100 chunks of a long stream (refreshing on every event costs a command per token).
    let refresh = match &event.data {
        EventData::Chunk { index, .. } => index % 100 == 0,
        EventData::Start { .. } => false,
        _ => true,
    };
    if refresh {
        p.cmd("PEXPIRE")
            .arg(&events)
            .arg(cfg.events_ttl.as_millis() as u64)
            .ignore();
    }
    if let Some((status, error)) = event.status() {
        let key = RedisConfig::status_key(id);
        let hset = p
            .cmd("HSET")
            .arg(&key)
            .arg("status")
            .arg(status.as_str())
            .arg("worker_id")
            .arg(&cfg.worker_id)
            .arg("updated_at")
            .arg(rfc3339(std::time::SystemTime::now()));
        match (status, error) {
            (JobStatus::Failed, Some(error)) => {
                hset.arg("error").arg(error).ignore();
            }
            _ => {
                // Not a failure (a new attempt, the end, a cancellation): an earlier error no
                // longer applies.
                hset.ignore();
                p.cmd("HDEL").arg(&key).arg("error").ignore();
            }
        }
        p.cmd("PEXPIRE")
            .arg(&key)
            .arg(cfg.status_ttl.as_millis() as u64)
            .ignore();
    }
    p
}

pub(crate) async fn publish(
    conn: &mut ConnectionManager,
    cfg: &RedisConfig,
    event: &WireEvent,
) -> Result<(), SourceError> {
    pipeline(cfg, event)
        .query_async::<()>(conn)
        .await
        .map_err(map_err)?;
    trace!(job_id = %event.job_id, event = event.event_type(), "published job event");
    Ok(())
}
