//! What keeps the Redis streams bounded beyond the ack's own `XDEL`: with `keep_acked`, the
//! periodic trim of each job stream (`XTRIM … MINID`) below the oldest entry that **any**
//! consumer group has not read (`last-delivered-id`) or not acked (the smallest id of its
//! pending list), decided and applied in one script so no group's unprocessed entry can go; and
//! the log lines and fill records of the capped dead-letter streams (`dead_letters`). It must
//! never trim a stream that has no consumer group, nor drop a dead letter itself (the
//! dead-letter script's `MAXLEN` does, and says how many).

use std::sync::Arc;

use redis::aio::ConnectionManager;
use redis::Script;
use tracing::{debug, warn};

use super::conn::map_err;
use super::scripts::Trimmed;
use super::Inner;
use crate::dead_letters::{self, Notice};
use crate::source::SourceError;

/// KEYS: a job stream. Trims it below the smallest of, over every group, the entry after its
/// `last-delivered-id` and the first entry of its pending list; returns how many went.
const TRIM: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return 0 end
local min_ms, min_seq
local function split(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function consider(ms, seq)
  if min_ms == nil or ms < min_ms or (ms == min_ms and seq < min_seq) then
    min_ms, min_seq = ms, seq
  end
end
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local ms, seq = split(f['last-delivered-id'])
  consider(ms, seq + 1)
  if tonumber(f['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], f['name'], '-', '+', 1)
    if #p > 0 then consider(split(p[1][1])) end
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', min_ms, min_seq))
";

/// Trims each of `streams` (see [`TRIM`]); the total of entries removed.
pub(crate) async fn trim_streams(
    conn: &mut ConnectionManager,
    streams: &[String],
) -> Result<u64, SourceError> {
    let script = Script::new(TRIM);
    let mut total = 0;
    for s in streams {
        let n: u64 = script.key(s).invoke_async(conn).await.map_err(map_err)?;
        if n > 0 {
            debug!(stream = %s, trimmed = n, "trimmed acked entries");
        }
        total += n;
    }
    Ok(total)
}

/// The `keep_acked` trimmer: every `trim_interval`, until the source drops.
pub(crate) async fn run(inner: Arc<Inner>) {
    let mut conn = inner.ctl.clone();
    loop {
        tokio::time::sleep(inner.cfg.trim_interval).await;
        if let Err(e) = trim_streams(&mut conn, &inner.streams_read()).await {
            warn!(error = %e, "trimming the job streams failed; trying again later");
        }
    }
}

/// Records a dead-letter stream's fill after a move, warning when the cap dropped old dead
/// letters or the stream reached [`dead_letters::WARN_FRACTION`] of it.
pub(crate) fn note_dead_letters(dlq: &str, t: Trimmed, cap: u64) {
    let queue = format!("redis:{dlq}");
    match dead_letters::record(&queue, t.size, cap, t.dropped) {
        Notice::Quiet => {}
        Notice::Filling => {
            warn!(stream = %dlq, size = t.size, cap, "dead-letter stream is filling up: the oldest dead letters will be dropped at the cap")
        }
        Notice::Dropped(n) => {
            warn!(stream = %dlq, dropped = n, size = t.size, cap, "dead-letter stream at its cap: the oldest dead letters were dropped")
        }
    }
}
