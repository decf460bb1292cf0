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
use crate::job::JobId;
use crate::source::SourceError;

/// KEYS, five per entry: job stream, completion record, event stream, owner marker,
/// cancellation flag. ARGV: group, consumer, lease ms, event stream cap, event stream grace ms (a
/// completed job's), delete (`1`: an acked entry leaves the stream), then two per entry: entry
/// id, event channel. Returns one code per entry: 0 hand out, 1 completed, 2 held, 3 hand out
/// (its cancellation was requested).
const GATE: &str = r"
local out = {}
for i = 0, #KEYS / 5 - 1 do
  local s, done, events, owner = KEYS[i*5+1], KEYS[i*5+2], KEYS[i*5+3], KEYS[i*5+4]
  local id, channel = ARGV[7+i*2], ARGV[8+i*2]
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
    out[#out + 1] = 1
  elseif holder and string.sub(holder, 1, #mine) ~= mine then
    local p = redis.call('XPENDING', s, ARGV[1], id, id, 1)
    if #p > 0 and p[1][2] == ARGV[2] then
      local c = tonumber(p[1][4]) - 1
      if c < 0 then c = 0 end
      redis.call('XCLAIM', s, ARGV[1], ARGV[2], 0, id, 'IDLE', 0, 'RETRYCOUNT', c, 'JUSTID')
    end
    out[#out + 1] = 2
  else
    if not holder or holder == value then
      redis.call('SET', owner, value, 'PX', ARGV[3])
    end
    out[#out + 1] = redis.call('EXISTS', KEYS[i*5+5]) * 3
  end
end
return out
";

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

#[derive(Debug)]
pub(crate) struct Gate(Script);

impl Gate {
    pub fn new() -> Self {
        Self(Script::new(GATE))
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
        let mut inv = self.0.prepare_invoke();
        inv.arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg(cfg.lease.as_millis() as u64)
            .arg(cfg.events_maxlen)
            .arg(cfg.events_grace.as_millis() as u64)
            .arg(if cfg.keep_acked { "0" } else { "1" });
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

fn verdicts(v: &Value, n: usize) -> Result<Vec<Verdict>, SourceError> {
    let bad = || SourceError::Broker(format!("unexpected gate reply: {v:?}"));
    let Value::Array(codes) = v else {
        return Err(bad());
    };
    if codes.len() != n {
        return Err(bad());
    }
    codes
        .iter()
        .map(|c| match c {
            Value::Int(0) => Ok(Verdict::Run { cancelled: false }),
            Value::Int(3) => Ok(Verdict::Run { cancelled: true }),
            Value::Int(1) => Ok(Verdict::Completed),
            Value::Int(2) => Ok(Verdict::Held),
            _ => Err(bad()),
        })
        .collect()
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
    }
}
