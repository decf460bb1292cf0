//! A job's final word on Redis: the status hash `job:{jobId}:status` and the completion record
//! `job:{jobId}:done` (docs/wire-format.md#job-entries). The record is written first on its own
//! ([`add_record`], `JobSource::record_success`), before the runner journals the success, so no
//! worker that dies with the success in its journal leaves the job to run again elsewhere; and
//! again with the job's `end` event, in the same pipeline (the runner publishes `end` only after
//! the success is journaled, and before it acks). It lives `done_ttl`, the status hash
//! `status_ttl`. Once a job is
//! completed, no later event of another delivery (a `claimed`, an `error`, a `cancelled`) changes
//! its status: both writes are one Lua script. Every claimed entry is checked against the record
//! before it is handed out (`gate`). This module owns the status script; it must never decide
//! which delivery runs.

use super::config::RedisConfig;
use crate::events::{rfc3339, EventData, JobStatus, WireEvent};

/// KEYS: status hash, completion record. ARGV: status, worker id, updated at, error ('' for
/// none), status ttl ms, the `end` event's JSON ('' unless the event is an `end`), completion
/// record ttl ms.
const STATUS: &str = r"
if ARGV[6] ~= '' then
  redis.call('HSET', KEYS[2], 'outcome', ARGV[1], 'event', ARGV[6], 'worker_id', ARGV[2], 'at', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
elseif redis.call('EXISTS', KEYS[2]) == 1 or redis.call('HGET', KEYS[1], 'status') == 'completed' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'worker_id', ARGV[2], 'updated_at', ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'error', ARGV[4])
else
  redis.call('HDEL', KEYS[1], 'error')
end
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// Appends the status update of `event` (and the completion record of an `end`, holding `json`,
/// the event as published) to `p`, as one `EVAL` (a handful of status events per job; the
/// script text travels with it, so a restarted Redis needs no reload).
pub(crate) fn add_status(
    p: &mut redis::Pipeline,
    cfg: &RedisConfig,
    event: &WireEvent,
    json: &str,
) {
    let Some((status, error)) = event.status() else {
        return;
    };
    let error = match (status, error) {
        (JobStatus::Failed, Some(error)) => error,
        _ => "",
    };
    let end = match &event.data {
        EventData::End { .. } => json,
        _ => "",
    };
    p.cmd("EVAL")
        .arg(STATUS)
        .arg(2)
        .arg(RedisConfig::status_key(&event.job_id))
        .arg(RedisConfig::done_key(&event.job_id))
        .arg(status.as_str())
        .arg(&cfg.worker_id)
        .arg(rfc3339(std::time::SystemTime::now()))
        .arg(error)
        .arg(cfg.status_ttl.as_millis() as u64)
        .arg(end)
        .arg(cfg.done_ttl.as_millis() as u64)
        .ignore();
}

/// Appends the completion record of a coming `end` (`json`, the event as it will be published)
/// to `p`, leaving the status hash alone: the job is `completed` once its `end` is published.
pub(crate) fn add_record(p: &mut redis::Pipeline, cfg: &RedisConfig, end: &WireEvent, json: &str) {
    let done = RedisConfig::done_key(&end.job_id);
    p.cmd("HSET")
        .arg(&done)
        .arg("outcome")
        .arg(JobStatus::Completed.as_str())
        .arg("event")
        .arg(json)
        .arg("worker_id")
        .arg(&cfg.worker_id)
        .arg("at")
        .arg(rfc3339(std::time::SystemTime::now()))
        .ignore();
    p.cmd("PEXPIRE")
        .arg(&done)
        .arg(cfg.done_ttl.as_millis() as u64)
        .ignore();
}
