//! The gate every claimed job entry passes before it is handed out (new, recovered and
//! reclaimed ones alike): ONE script call per batch decides each entry against its job's
//! completion record `job:{jobId}:done` and owner marker `job:{jobId}:owner`
//! (docs/wire-format.md#job-entries):
//! - a **completed** job's entry is acked (and deleted, unless `keep_acked`) and its recorded
//!   `end` re-published, never run;
//! - an entry whose job's marker is held by **another** consumer (a second copy of the `jobId`
//!   running elsewhere) is **held**: left pending to this consumer with its delivery count
//!   lowered back (it was not an attempt) and its idle time at zero, so a reclaimer takes it
//!   again after one lease, when the record (or a free marker) decides it;
//! - otherwise the entry is **handed out**, and the marker set to `{consumer}|{stream}|{entry id}`
//!   with the lease as its time to live, unless this consumer holds it already for another
//!   entry of the job (a duplicate on one node, which the runner hands back: its settlement
//!   must not drop the running copy's marker). The marker is renewed with the lease and dropped
//!   by the settlement of the entry it names (`scripts`); a node that dies lets it expire with
//!   its lease.
//!
//! For each entry handed out the gate also reads the job's cancellation flag
//! (`job:cancelled:{jobId}`): the runner's check before the start uses that answer instead of
//! asking again moments later.
//!
//! This module owns the script and the meaning of its answers; it must never settle an entry
//! it hands out nor decide anything about a job but whether this copy may run now.

use redis::aio::ConnectionManager;
use redis::{Script, Value};

use super::config::RedisConfig;
use super::conn::map_err;
use super::reply::{self, RawEntry};
use crate::job::{JobId, MAX_JOB_ID_LEN};
use crate::source::SourceError;

/// The Lua of the function `gate(s, id, done, events, owner, cancel, channel)` both scripts
/// share: it decides one entry and returns its code (0 hand out, 1 completed, 2 held, 3 hand
/// out though its cancellation was requested). ARGV[1..6]: group, consumer, lease ms, event
/// stream cap, event stream grace ms (a completed job's), delete (`1`: an acked entry leaves
/// the stream).
macro_rules! gate_fn {
    () => {
        r"
local function gate(s, id, done, events, owner, cancel, channel)
  local ev = redis.call('HGET', done, 'event')
  local holder = redis.call('GET', owner)
  local mine = ARGV[2] .. '|'
  local value = mine .. s .. '|' .. id
  if ev then
    redis.call('XACK', s, ARGV[1], id)
    if ARGV[6] == '1' then redis.call('XDEL', s, id) end
    redis.call('PUBLISH', channel, ev)
    redis.call('XADD', events, 'MAXLEN', '~', ARGV[4], '*', 'type', 'end', 'event', ev)
    redis.call('PEXPIRE', events, ARGV[5])
    return 1
  elseif holder and string.sub(holder, 1, #mine) ~= mine then
    local p = redis.call('XPENDING', s, ARGV[1], id, id, 1)
    if #p > 0 and p[1][2] == ARGV[2] then
      local c = tonumber(p[1][4]) - 1
      if c < 0 then c = 0 end
      redis.call('XCLAIM', s, ARGV[1], ARGV[2], 0, id, 'IDLE', 0, 'RETRYCOUNT', c, 'JUSTID')
    end
    return 2
  end
  if not holder or holder == value then
    redis.call('SET', owner, value, 'PX', ARGV[3])
  end
  return redis.call('EXISTS', cancel) * 3
end
"
    };
}

/// KEYS, five per entry: job stream, completion record, event stream, owner marker,
/// cancellation flag. ARGV: the six of `gate`, then two per entry: entry id, event channel.
/// Returns one code per entry.
const GATE: &str = concat!(
    gate_fn!(),
    r"
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local k = i * 5
  out[#out + 1] = gate(KEYS[k+1], ARGV[7+i*2], KEYS[k+2], KEYS[k+3], KEYS[k+4], KEYS[k+5], ARGV[8+i*2])
end
return out
"
);

/// Reads new entries and gates them in the same call, for a consumer that expects a backlog
/// (the blocking read waits in `fetch`). KEYS: the job streams. ARGV: the six of `gate`, then
/// the `COUNT` per stream and the longest job id allowed. The job's keys are named from the
/// entry's `jobId` (the last one, as the parser takes it), as `RedisConfig` names them; an
/// entry whose `jobId` is missing, empty, too long or holds an ASCII control character is one
/// the parser rejects as well: it is not gated (code -1). Returns the `XREADGROUP` reply (an empty array when
/// nothing was new), the codes of its entries in order, and 1 when a stream holds entries
/// after the last one read (a backlog waits), else 0.
const READ_GATE: &str = concat!(
    gate_fn!(),
    r"
local args = {'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[7], 'STREAMS'}
for i = 1, #KEYS do args[#args + 1] = KEYS[i] end
for i = 1, #KEYS do args[#args + 1] = '>' end
local read = redis.call('XREADGROUP', unpack(args))
if not read then return {{}, {}, 0} end
local codes, more = {}, 0
for _, st in ipairs(read) do
  local s, list = st[1], st[2]
  for _, e in ipairs(list) do
    local job, f = nil, e[2]
    if type(f) ~= 'table' then f = {} end
    for j = 1, #f, 2 do
      if f[j] == 'jobId' then job = f[j + 1] end
    end
    if job and #job > 0 and #job <= tonumber(ARGV[8]) and not string.find(job, '%c') then
      codes[#codes + 1] = gate(s, e[1], 'job:' .. job .. ':done', 'stream:v1:' .. job .. ':events',
        'job:' .. job .. ':owner', 'job:cancelled:' .. job, 'stream:v1:' .. job)
    else
      codes[#codes + 1] = -1
    end
  end
  local last = redis.call('XREVRANGE', s, '+', '-', 'COUNT', 1)
  if #list > 0 and last[1] and last[1][1] ~= list[#list][1] then more = 1 end
end
return {read, codes, more}
"
);

/// What the gate decided for one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Hand it out: this consumer owns the job's marker now; `cancelled`: the producer asked
    /// for its cancellation.
    Run { cancelled: bool },
    /// The job is completed: acked and its result re-published.
    Completed,
    /// Another consumer runs this job: left pending for the lease.
    Held,
}

/// One entry to decide: its stream, id and job.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ask<'a> {
    pub stream: &'a str,
    pub id: &'a str,
    pub job: &'a JobId,
}

/// What one read-and-gate call claimed: each stream's new entries, the verdict on each entry
/// in order (`None`: not gated, the parser rejects its `jobId`), and whether a backlog waits.
#[derive(Debug)]
pub(crate) struct Gated {
    pub read: Vec<(String, Vec<RawEntry>)>,
    pub verdicts: Vec<Option<Verdict>>,
    pub more: bool,
}

#[derive(Debug)]
pub(crate) struct Gate {
    gate: Script,
    read_gate: Script,
}

impl Gate {
    pub fn new() -> Self {
        Self {
            gate: Script::new(GATE),
            read_gate: Script::new(READ_GATE),
        }
    }

    /// Reads up to `count` new entries of each of `streams` (without waiting) and gates the
    /// jobs among them, in one script call.
    pub async fn read(
        &self,
        conn: &mut ConnectionManager,
        cfg: &RedisConfig,
        streams: &[&String],
        count: usize,
    ) -> Result<Gated, SourceError> {
        let mut inv = self.read_gate.prepare_invoke();
        args(&mut inv, cfg).arg(count).arg(MAX_JOB_ID_LEN);
        for s in streams {
            inv.key(s.as_str());
        }
        let v: Value = inv.invoke_async(conn).await.map_err(map_err)?;
        gated(&v)
    }

    /// Decides every entry of `asks` in one script call (none for an empty batch).
    pub async fn decide(
        &self,
        conn: &mut ConnectionManager,
        cfg: &RedisConfig,
        asks: &[Ask<'_>],
    ) -> Result<Vec<Verdict>, SourceError> {
        if asks.is_empty() {
            return Ok(Vec::new());
        }
        let mut inv = self.gate.prepare_invoke();
        args(&mut inv, cfg);
        for a in asks {
            inv.key(a.stream)
                .key(RedisConfig::done_key(a.job))
                .key(RedisConfig::events_stream(a.job))
                .key(RedisConfig::owner_key(a.job))
                .key(RedisConfig::cancel_key(a.job));
            inv.arg(a.id).arg(RedisConfig::events_channel(a.job));
        }
        let v: Value = inv.invoke_async(conn).await.map_err(map_err)?;
        verdicts(&v, asks.len())
    }
}

/// The six arguments `gate` reads, first of both scripts'.
fn args<'a, 'b>(
    inv: &'b mut redis::ScriptInvocation<'a>,
    cfg: &RedisConfig,
) -> &'b mut redis::ScriptInvocation<'a> {
    inv.arg(&cfg.group)
        .arg(&cfg.consumer)
        .arg(cfg.lease.as_millis() as u64)
        .arg(cfg.events_maxlen)
        .arg(cfg.events_grace.as_millis() as u64)
        .arg(if cfg.keep_acked { "0" } else { "1" })
}

fn bad_reply(v: &Value) -> SourceError {
    SourceError::Broker(format!("unexpected gate reply: {v:?}"))
}

/// One code of either script; -1 (not gated) is `None`.
fn verdict(c: &Value) -> Option<Option<Verdict>> {
    match c {
        Value::Int(0) => Some(Some(Verdict::Run { cancelled: false })),
        Value::Int(3) => Some(Some(Verdict::Run { cancelled: true })),
        Value::Int(1) => Some(Some(Verdict::Completed)),
        Value::Int(2) => Some(Some(Verdict::Held)),
        Value::Int(-1) => Some(None),
        _ => None,
    }
}

fn verdicts(v: &Value, n: usize) -> Result<Vec<Verdict>, SourceError> {
    let Value::Array(codes) = v else {
        return Err(bad_reply(v));
    };
    if codes.len() != n {
        return Err(bad_reply(v));
    }
    codes
        .iter()
        .map(|c| verdict(c).flatten().ok_or_else(|| bad_reply(v)))
        .collect()
}

/// The read-and-gate script's answer: a code for every entry read.
fn gated(v: &Value) -> Result<Gated, SourceError> {
    let Value::Array(parts) = v else {
        return Err(bad_reply(v));
    };
    let [read, Value::Array(codes), more] = parts.as_slice() else {
        return Err(bad_reply(v));
    };
    let read = reply::read(read)?;
    let verdicts = codes
        .iter()
        .map(|c| verdict(c).ok_or_else(|| bad_reply(v)))
        .collect::<Result<Vec<_>, _>>()?;
    if verdicts.len() != read.iter().map(|(_, e)| e.len()).sum::<usize>() {
        return Err(bad_reply(v));
    }
    Ok(Gated {
        read,
        verdicts,
        more: matches!(more, Value::Int(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_verdicts_one_per_entry() {
        let v = Value::Array(vec![
            Value::Int(0),
            Value::Int(1),
            Value::Int(2),
            Value::Int(3),
        ]);
        assert_eq!(
            verdicts(&v, 4).unwrap(),
            vec![
                Verdict::Run { cancelled: false },
                Verdict::Completed,
                Verdict::Held,
                Verdict::Run { cancelled: true }
            ]
        );
        assert!(verdicts(&v, 3).is_err(), "a reply of another length");
        assert!(verdicts(&Value::Array(vec![Value::Int(7)]), 1).is_err());
        assert!(verdicts(&Value::Int(0), 1).is_err());
        assert!(
            verdicts(&Value::Array(vec![Value::Int(-1)]), 1).is_err(),
            "the gate alone gates every entry it is given"
        );
    }

    #[test]
    fn the_read_and_gate_script_names_a_jobs_keys_as_the_config_does() {
        let job = JobId::new("J").unwrap();
        let named = [
            RedisConfig::done_key(&job),
            RedisConfig::events_stream(&job),
            RedisConfig::owner_key(&job),
            RedisConfig::cancel_key(&job),
            RedisConfig::events_channel(&job),
        ];
        for key in named {
            let (before, after) = key.split_once('J').unwrap();
            let lua = if after.is_empty() {
                format!("'{before}' .. job")
            } else {
                format!("'{before}' .. job .. '{after}'")
            };
            // The name ends where the Lua expression ends.
            let whole = READ_GATE
                .match_indices(&lua)
                .any(|(at, _)| !READ_GATE[at + lua.len()..].starts_with(" .."));
            assert!(whole, "{key}: {lua} is not in the script");
        }
    }

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn read_of(ids: &[&str]) -> Value {
        let entries = ids
            .iter()
            .map(|id| Value::Array(vec![b(id), Value::Array(vec![b("jobId"), b("j")])]))
            .collect();
        Value::Array(vec![Value::Array(vec![
            b("jobs:v1:x"),
            Value::Array(entries),
        ])])
    }

    #[test]
    fn a_read_and_gate_answer_has_a_code_for_every_entry() {
        let v = Value::Array(vec![
            read_of(&["1-0", "2-0"]),
            Value::Array(vec![Value::Int(-1), Value::Int(3)]),
            Value::Int(1),
        ]);
        let g = gated(&v).unwrap();
        assert_eq!(g.read[0].1.len(), 2);
        assert_eq!(
            g.verdicts,
            vec![None, Some(Verdict::Run { cancelled: true })]
        );
        assert!(g.more);

        let nothing = Value::Array(vec![
            Value::Array(vec![]),
            Value::Array(vec![]),
            Value::Int(0),
        ]);
        let g = gated(&nothing).unwrap();
        assert!(g.read.is_empty() && g.verdicts.is_empty() && !g.more);

        let short = Value::Array(vec![
            read_of(&["1-0", "2-0"]),
            Value::Array(vec![Value::Int(0)]),
            Value::Int(0),
        ]);
        assert!(gated(&short).is_err(), "a code missing");
        let odd = Value::Array(vec![
            read_of(&["1-0"]),
            Value::Array(vec![Value::Int(9)]),
            Value::Int(0),
        ]);
        assert!(gated(&odd).is_err(), "an unknown code");
        assert!(gated(&Value::Int(1)).is_err());
    }
}
