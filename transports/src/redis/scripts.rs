//! The Lua scripts that make ownership-checked changes to a pending entry atomic: each first
//! checks with `XPENDING` that this consumer still owns the entry, then claims it to itself
//! (lease extension, retry, release), acks it, or moves it to the dead-letter stream and acks it.
//! A settlement (ack, retry, release, dead-letter) also drops the job's owner marker
//! (`job:{jobId}:owner`, see `gate`) when it names this consumer and this entry, whoever owns the
//! entry now; a renewal (`ClaimMode::Renew`) extends that marker with the lease, only while this
//! consumer still owns both. The marker key is the script's last key, left out when the job is
//! unknown. The ack of a success also comes as one script with the job's `end` before it
//! (`record`'s event code, then the ack's own text). This module owns the scripts and their
//! return codes; it must never decide which to run.

use redis::aio::ConnectionManager;
use redis::Script;

use super::config::RedisConfig;
use super::conn::map_err;
use super::record::{self, Write};
use super::reply;
use crate::events::WireEvent;
use crate::source::SourceError;

/// The outcome of an ownership-checked script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owned {
    /// Done.
    Applied,
    /// The entry is not pending any more (settled already, or deleted).
    Gone,
    /// Another consumer owns the entry.
    Stolen,
}

pub(crate) fn owned(v: &redis::Value) -> Result<Owned, SourceError> {
    let v = match v {
        redis::Value::Array(parts) => parts.first().unwrap_or(v),
        other => other,
    };
    Ok(match reply::status(v)? {
        1 => Owned::Applied,
        -1 => Owned::Stolen,
        _ => Owned::Gone,
    })
}

/// The owner marker's value for this entry (consumer ARGV[2], stream KEYS[1], id ARGV[3]), and
/// dropping marker `k` (absent: nothing) when it names this entry.
const MARKER: &str = r"
local marked = ARGV[2] .. '|' .. KEYS[1] .. '|' .. ARGV[3]
local function drop_marker(k)
  if k and redis.call('GET', k) == marked then redis.call('DEL', k) end
end
";

const OWNER_CHECK: &str = r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #p == 0 then return 0 end
if p[1][2] ~= ARGV[2] then return -1 end
";

/// KEYS: stream, owner marker (optional). ARGV: group, consumer, id, idle_ms, mode (`keep` |
/// `release` | `renew`), lease ms.
/// Claims the entry to its owner with the given idle time, without counting a delivery; in
/// `release` mode also takes one off the delivery count, since the next claim adds it back. A
/// release of an entry already released (idle that long: a retry whose first reply was lost)
/// changes nothing, so the count is lowered once per delivery. `renew` is `keep` that also
/// extends the marker; the other modes settle, and drop it.
const CLAIM_PRE: &str = r"
if ARGV[5] ~= 'renew' then drop_marker(KEYS[2]) end
";
const CLAIM: &str = r"
local r
if ARGV[5] == 'release' and tonumber(p[1][3]) >= tonumber(ARGV[4]) then return 1 end
if ARGV[5] == 'release' then
  local c = tonumber(p[1][4]) - 1
  if c < 0 then c = 0 end
  r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'RETRYCOUNT', c, 'JUSTID')
else
  r = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'IDLE', ARGV[4], 'JUSTID')
end
if #r == 0 then return 0 end
if ARGV[5] == 'renew' and KEYS[2] and redis.call('GET', KEYS[2]) == marked then
  redis.call('PEXPIRE', KEYS[2], ARGV[6])
end
return 1
";

/// KEYS: stream, owner marker (optional). ARGV: group, consumer, id, delete (`1`: the entry
/// leaves the stream with its ack, so a job stream holds only unfinished work).
const ACK_PRE: &str = "drop_marker(KEYS[2])\n";
const ACK: &str = r"
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
return 1
";

/// An `end` and the ack of its entry in one call. KEYS: the job's event stream, status hash and
/// completion record (`record::EVENT_FN`), stream, owner marker (optional). ARGV: `event`, the
/// end's eleven arguments (`record::push_events`), then the ack's: group, consumer, id, delete.
/// The event is written whoever owns the entry; the answer is the ack's. The ack's own text
/// follows as it is, reading its keys and arguments from the shifted `KEYS` and `ARGV`.
const END_THEN_ACK: &str = "one(2)
local KEYS = {KEYS[4], KEYS[5]}
local ARGV = {ARGV[13], ARGV[14], ARGV[15], ARGV[16]}
";

/// KEYS: stream, dead-letter stream, owner marker (optional). ARGV: group, consumer, id, delete
/// (`1`: the entry leaves the job stream with its ack), the dead-letter stream's cap (entries),
/// its age limit in ms (`0`: none), then field/value pairs. The
/// original entry's `jobId`, `type`, `payload`, `enqueuedAt` and `rayId` replace the given ones
/// when the entry still exists, so the dead letter keeps the producer's exact text. Returns
/// `{1, dropped, size}`: how many old dead letters the cap dropped, and how many are left.
const DEAD_LETTER_PRE: &str = "drop_marker(KEYS[3])\n";
const DEAD_LETTER: &str = r"
local fields = {}
local index = {}
for i = 7, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  index[ARGV[i]] = #fields
end
local e = redis.call('XRANGE', KEYS[1], ARGV[3], ARGV[3])
if #e > 0 then
  local orig = e[1][2]
  for j = 1, #orig, 2 do
    local k = orig[j]
    if k == 'jobId' or k == 'type' or k == 'payload' or k == 'enqueuedAt' or k == 'rayId' then
      if index[k] then
        fields[index[k]] = orig[j + 1]
      else
        fields[#fields + 1] = k
        fields[#fields + 1] = orig[j + 1]
        index[k] = #fields
      end
    end
  end
end
local before = redis.call('XLEN', KEYS[2])
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[5], '*', unpack(fields))
if tonumber(ARGV[6]) > 0 then
  local t = redis.call('TIME')
  local oldest = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[6])
  if oldest > 0 then redis.call('XTRIM', KEYS[2], 'MINID', string.format('%d', oldest)) end
end
local after = redis.call('XLEN', KEYS[2])
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
if ARGV[4] == '1' then redis.call('XDEL', KEYS[1], ARGV[3]) end
return {1, before + 1 - after, after}
";

/// How `claim` treats the delivery count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClaimMode {
    /// A retry (or a parked retry's refresh): the marker is dropped.
    Keep,
    /// Handed back: the marker is dropped and the count lowered.
    Release,
    /// A lease extension: the marker is extended too.
    Renew,
}

#[derive(Debug)]
pub(crate) struct Scripts {
    claim: Script,
    ack: Script,
    dead_letter: Script,
    /// An `end` with its ack ([`END_THEN_ACK`]).
    end_and_ack: Script,
    /// Its text, for a Redis that forgot it (it is called inside pipelines, `publish::send`).
    end_and_ack_text: String,
}

/// Who is asking about which entry, and the owner marker of its job when known.
#[derive(Debug, Clone)]
pub(crate) struct Target<'a> {
    pub stream: &'a str,
    pub group: &'a str,
    pub consumer: &'a str,
    pub id: &'a str,
    pub marker: Option<String>,
}

impl Scripts {
    pub fn new() -> Self {
        let text = |pre: &str, body: &str| format!("{MARKER}{pre}{OWNER_CHECK}{body}");
        let ack_text = text(ACK_PRE, ACK);
        let end_and_ack_text = format!("{}{END_THEN_ACK}{ack_text}", record::EVENT_FN);
        Self {
            claim: Script::new(&text(CLAIM_PRE, CLAIM)),
            ack: Script::new(&ack_text),
            dead_letter: Script::new(&text(DEAD_LETTER_PRE, DEAD_LETTER)),
            end_and_ack: Script::new(&end_and_ack_text),
            end_and_ack_text,
        }
    }

    /// The text of the script [`Scripts::end_and_ack_command`] calls.
    pub fn end_and_ack_text(&self) -> &str {
        &self.end_and_ack_text
    }

    /// Publishes `end` (as `record` does) and then acks its entry, in one script call; its
    /// answer is the ack's, read with [`owned`].
    pub fn end_and_ack_command(
        &self,
        cfg: &RedisConfig,
        end: &WireEvent,
        t: &Target<'_>,
        keep: bool,
    ) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.end_and_ack.get_hash())
            .arg(4 + usize::from(t.marker.is_some()));
        record::push_keys(&mut cmd, &end.job_id);
        cmd.arg(t.stream).arg(t.marker.as_deref());
        cmd.arg(Write::Event.as_str());
        record::push_events(&mut cmd, cfg, Write::Event, std::slice::from_ref(end));
        cmd.arg(t.group)
            .arg(t.consumer)
            .arg(t.id)
            .arg(delete_flag(keep));
        cmd
    }

    /// Claims the entry to its owner, setting its idle time to `idle_ms`; `lease` is what a
    /// renewal extends the marker by.
    pub async fn claim(
        &self,
        conn: &mut ConnectionManager,
        t: Target<'_>,
        idle_ms: u64,
        mode: ClaimMode,
        lease: std::time::Duration,
    ) -> Result<Owned, SourceError> {
        let mode = match mode {
            ClaimMode::Keep => "keep",
            ClaimMode::Release => "release",
            ClaimMode::Renew => "renew",
        };
        let mut inv = self.claim.key(t.stream);
        inv.key(t.marker.as_deref())
            .arg(t.group)
            .arg(t.consumer)
            .arg(t.id)
            .arg(idle_ms)
            .arg(mode)
            .arg(lease.as_millis() as u64);
        let v: redis::Value = inv.invoke_async(conn).await.map_err(map_err)?;
        owned(&v)
    }

    /// Acks the entry, deleting it from the stream unless `keep` (`--keep-acked`).
    pub async fn ack(
        &self,
        conn: &mut ConnectionManager,
        t: Target<'_>,
        keep: bool,
    ) -> Result<Owned, SourceError> {
        let mut inv = self.ack.key(t.stream);
        inv.key(t.marker.as_deref())
            .arg(t.group)
            .arg(t.consumer)
            .arg(t.id)
            .arg(delete_flag(keep));
        let v: redis::Value = inv.invoke_async(conn).await.map_err(map_err)?;
        owned(&v)
    }

    /// Moves the entry to the dead-letter stream `to` (capped) and acks it (deleting it unless
    /// `keep`); with the outcome, the dead letters the cap dropped and the ones left.
    pub async fn dead_letter(
        &self,
        conn: &mut ConnectionManager,
        t: Target<'_>,
        to: DeadLetterTo<'_>,
        fields: &[(String, String)],
    ) -> Result<(Owned, Option<Trimmed>), SourceError> {
        let mut inv = self.dead_letter.key(t.stream);
        inv.key(to.stream)
            .key(t.marker.as_deref())
            .arg(t.group)
            .arg(t.consumer)
            .arg(t.id)
            .arg(delete_flag(to.keep))
            .arg(to.max_len)
            .arg(to.max_age.as_millis() as u64);
        for (k, v) in fields {
            inv.arg(k).arg(v);
        }
        let v: redis::Value = inv.invoke_async(conn).await.map_err(map_err)?;
        Ok((owned(&v)?, trimmed(&v)))
    }
}

fn delete_flag(keep: bool) -> &'static str {
    if keep {
        "0"
    } else {
        "1"
    }
}

/// Where a dead letter goes and how that stream is capped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeadLetterTo<'a> {
    pub stream: &'a str,
    pub max_len: u64,
    pub max_age: std::time::Duration,
    /// Keep the original entry in the job stream (`--keep-acked`).
    pub keep: bool,
}

/// What a dead-letter move did to the capped dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trimmed {
    /// Old dead letters dropped by the cap.
    pub dropped: u64,
    /// Dead letters left in the stream.
    pub size: u64,
}

/// `{1, dropped, size}` of an applied dead-letter move.
fn trimmed(v: &redis::Value) -> Option<Trimmed> {
    let redis::Value::Array(parts) = v else {
        return None;
    };
    let n = |i: usize| match parts.get(i) {
        Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
        _ => None,
    };
    Some(Trimmed {
        dropped: n(1)?,
        size: n(2)?,
    })
}
