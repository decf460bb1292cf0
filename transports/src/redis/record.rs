//! A job's events and final word on Redis, in one script call per event or per group of a
//! job's events sent together ([`EVENT`]; a job's `claimed` and `start`): each event is
//! `PUBLISH`ed on `stream:v1:{jobId}` and appended to its capped, expiring stream (fields
//! `type` and `event`, the JSON sent once for both), and its status goes to the hash
//! `job:{jobId}:status`, with the completion record `job:{jobId}:done` of an `end`
//! (docs/wire-format.md#job-entries). The record is first written on its own ([`Write::Record`],
//! `JobSource::record_success`), before the runner journals the success, so no worker that dies
//! with the success in its journal leaves the job to run again elsewhere; the job's `end` writes
//! it only if it is missing (the success could not be recorded before, or Redis lost it). It
//! lives `done_ttl`, the status hash `status_ttl`. Once a job is completed, no later event of
//! another delivery (a `claimed`, an `error`, a `cancelled`) changes its status. Every claimed
//! entry is checked against the record before it is handed out (`gate`). The script is called
//! by its SHA inside pipelines (`publish`). This module owns the script; it must never decide
//! which delivery runs or which event is due.

use super::config::RedisConfig;
use crate::events::{rfc3339, EventData, JobStatus, WireEvent};

/// The Lua of [`EVENT_FN`], a macro so that [`EVENT`] can be built from it at compile time.
macro_rules! event_fn {
    () => {
        r"
local what = ARGV[1]
local function record(b)
  redis.call('HSET', KEYS[3], 'outcome', 'completed', 'event', ARGV[b], 'worker_id', ARGV[b+6], 'at', ARGV[b+7])
  redis.call('PEXPIRE', KEYS[3], ARGV[b+10])
end
local function one(b)
  local json, ty, status = ARGV[b], ARGV[b+1], ARGV[b+5]
  if what == 'record' then
    record(b)
    return 1
  end
  if what == 'event' then
    redis.call('PUBLISH', ARGV[b+2], json)
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[b+3], '*', 'type', ty, 'event', json)
    if ARGV[b+4] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[b+4]) end
  end
  if status == '' then return 1 end
  if ty == 'end' then
    if redis.call('EXISTS', KEYS[3]) == 0 then record(b) end
  elseif redis.call('EXISTS', KEYS[3]) == 1 or redis.call('HGET', KEYS[2], 'status') == 'completed' then
    return 0
  end
  redis.call('HSET', KEYS[2], 'status', status, 'worker_id', ARGV[b+6], 'updated_at', ARGV[b+7])
  if ARGV[b+8] ~= '' then
    redis.call('HSET', KEYS[2], 'error', ARGV[b+8])
  else
    redis.call('HDEL', KEYS[2], 'error')
  end
  redis.call('PEXPIRE', KEYS[2], ARGV[b+9])
  return 1
end
"
    };
}

/// [`EVENT`]'s body: the function `one(b)` that writes the event whose arguments start at
/// `ARGV[b]`; the script that settles an entry with the job's `end` calls it too (`scripts`).
pub(crate) const EVENT_FN: &str = event_fn!();

/// KEYS: event stream, status hash, completion record (all of one job). ARGV: what to write
/// (`event`: publish, append, status; `status`: the status and the record of an `end` only;
/// `record`: the completion record only, unconditionally), then eleven per event, for one or
/// more events of the job in order: the event's JSON, its type, its channel, the stream's cap,
/// the stream's new time to live in ms ('' leaves it), the status ('' none), worker id, at,
/// error ('' none), status ttl ms, record ttl ms. Returns the last event's answer: 0 when its
/// status was left alone (the job is completed), else 1.
pub(crate) const EVENT: &str = concat!(
    event_fn!(),
    r"
local r = 1
for b = 2, #ARGV, 11 do r = one(b) end
return r
"
);

/// What one call of the script writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// The event published and appended, its status (and the record of an `end`).
    Event,
    /// Only the status and the record of an `end` (written again after an outage).
    Status,
    /// Only the completion record of a coming `end`, whatever is there.
    Record,
}

impl Write {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Write::Event => "event",
            Write::Status => "status",
            Write::Record => "record",
        }
    }
}

fn script() -> &'static redis::Script {
    static SCRIPT: std::sync::OnceLock<redis::Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| redis::Script::new(EVENT))
}

/// The script's call that writes `event`.
pub(crate) fn command(cfg: &RedisConfig, write: Write, event: &WireEvent) -> redis::Cmd {
    command_all(cfg, write, std::slice::from_ref(event))
}

/// The script's one call that writes `events`, in order: events of one job (the first one's),
/// at least one.
pub(crate) fn command_all(cfg: &RedisConfig, write: Write, events: &[WireEvent]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script().get_hash()).arg(3);
    push_keys(&mut cmd, &events[0].job_id);
    cmd.arg(write.as_str());
    push_events(&mut cmd, cfg, write, events);
    cmd
}

/// The three keys [`EVENT_FN`] writes for job `id`, in its order.
pub(crate) fn push_keys(cmd: &mut redis::Cmd, id: &crate::job::JobId) {
    cmd.arg(RedisConfig::events_stream(id))
        .arg(RedisConfig::status_key(id))
        .arg(RedisConfig::done_key(id));
}

/// The eleven arguments of each of `events` (of one job) that [`EVENT_FN`]'s `one` reads.
pub(crate) fn push_events(
    cmd: &mut redis::Cmd,
    cfg: &RedisConfig,
    write: Write,
    events: &[WireEvent],
) {
    let id = &events[0].job_id;
    debug_assert!(events.iter().all(|e| e.job_id == *id), "events of one job");
    let channel = RedisConfig::events_channel(id);
    let at = rfc3339(std::time::SystemTime::now());
    for event in events {
        let (status, error) = match (write, event.status()) {
            (Write::Record, _) | (_, None) => ("", ""),
            (_, Some((JobStatus::Failed, Some(error)))) => (JobStatus::Failed.as_str(), error),
            (_, Some((status, _))) => (status.as_str(), ""),
        };
        cmd.arg(event.to_json())
            .arg(event.event_type())
            .arg(&channel)
            .arg(cfg.events_maxlen)
            .arg(stream_ttl(cfg, &event.data).map_or(String::new(), |t| t.as_millis().to_string()))
            .arg(status)
            .arg(&cfg.worker_id)
            .arg(&at)
            .arg(error)
            .arg(cfg.status_ttl.as_millis() as u64)
            .arg(cfg.done_ttl.as_millis() as u64);
    }
}

/// The event stream's new time to live after `data`, if it changes. While the job runs it runs
/// from the last refresh: at the claim, at a retryable error, and every 100 chunks of a long
/// stream (refreshing on every event costs a command per token); the terminal event gives it
/// the short grace, once.
fn stream_ttl(cfg: &RedisConfig, data: &EventData) -> Option<std::time::Duration> {
    match data {
        EventData::Chunk { index, .. } if index % 100 == 0 => Some(cfg.events_ttl),
        EventData::Chunk { .. } | EventData::Start { .. } => None,
        EventData::Error {
            recoverable: true, ..
        } => Some(cfg.events_ttl),
        d if d.is_terminal() => Some(cfg.events_grace),
        _ => Some(cfg.events_ttl),
    }
}
