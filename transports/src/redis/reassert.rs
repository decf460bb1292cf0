//! What this node told Redis last, told again after an outage. A Redis that restarts under
//! `appendfsync everysec` (or fails over to a lagging replica) may come back without its last
//! second of writes: completion records, acks and claims among them. A forgotten claim makes an
//! entry new again and a forgotten record lets another node run a job this node finished. So
//! the `end` events this node published recently are kept in memory ([`RecentEnds`]), and when
//! the fetcher reaches Redis again after a failure it writes their completion records again
//! ([`rewrite`]) before it hands anything out, and hands out no new entry for
//! [`hold_after_outage`], so every node's rewritten records are back before any node reads the
//! entries Redis forgot. This module never decides a settlement and never runs a job.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::time::Instant;

use super::config::RedisConfig;
use crate::events::{EventData, WireEvent};
use crate::source::SourceError;

/// How long an `end` is remembered: well past the second an everysec AOF can lose, and past
/// the outage a fetcher's backoff (at most 5 s between tries) may take to notice.
const KEEP: Duration = Duration::from_secs(60);

/// The most `end` events remembered (the newest kept).
const MAX: usize = 10_000;

/// How many of the newest remembered events a job's second `end` (its record, then its
/// publication) is looked for among.
const SAME_JOB_WITHIN: usize = 64;

/// The `end` events this node published in the last [`KEEP`], newest last.
#[derive(Debug, Default)]
pub(crate) struct RecentEnds {
    ends: Mutex<VecDeque<(Instant, WireEvent)>>,
}

impl RecentEnds {
    /// Remembers `event` if it is an `end` (other events leave no record).
    pub(crate) fn remember(&self, event: &WireEvent) {
        if !matches!(event.data, EventData::End { .. }) {
            return;
        }
        let now = Instant::now();
        let mut ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        // A success is remembered when its record is written and again with its `end`,
        // moments later: the second replaces the first rather than taking a second place.
        let again = ends
            .iter_mut()
            .rev()
            .take(SAME_JOB_WITHIN)
            .find(|(_, e)| e.job_id == event.job_id);
        match again {
            Some(slot) => *slot = (now, event.clone()),
            None => ends.push_back((now, event.clone())),
        }
        while ends.len() > MAX || ends.front().is_some_and(|(at, _)| now - *at > KEEP) {
            ends.pop_front();
        }
    }

    /// The remembered `end` events still within [`KEEP`].
    pub(crate) fn recent(&self) -> Vec<WireEvent> {
        let now = Instant::now();
        let ends = self.ends.lock().unwrap_or_else(|e| e.into_inner());
        ends.iter()
            .filter(|(at, _)| now - *at <= KEEP)
            .map(|(_, e)| e.clone())
            .collect()
    }
}

/// Writes the completion record (and final status) of each of `ends` again, in one pipeline.
pub(crate) async fn rewrite(
    conn: &mut ConnectionManager,
    cfg: &RedisConfig,
    ends: &[WireEvent],
) -> Result<(), SourceError> {
    if ends.is_empty() {
        return Ok(());
    }
    use super::record::{command, Write, EVENT};
    let cmds: Vec<redis::Cmd> = ends
        .iter()
        .map(|end| command(cfg, Write::Status, end))
        .collect();
    let refs: Vec<&redis::Cmd> = cmds.iter().collect();
    let answers = super::publish::send(conn, &refs, &[EVENT.to_owned()]).await?;
    answers
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), |e| Err(super::conn::map_err(e)))
}

/// How long after an outage a fetcher hands out no new entry: long enough for every node's
/// fetcher to reach Redis again (their backoffs differ by at most a few seconds) and rewrite its
/// records, and never longer than a lease.
pub(crate) fn hold_after_outage(lease: Duration) -> Duration {
    lease.min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventMeta;
    use crate::job::JobId;

    fn event(id: &str, data: EventData) -> WireEvent {
        WireEvent::new(JobId::new(id).unwrap(), EventMeta::new("w", "n"), data)
    }

    #[test]
    fn only_ends_are_remembered_newest_last_and_bounded() {
        let r = RecentEnds::default();
        r.remember(&event(
            "a",
            EventData::Claimed {
                agent_version: "1".into(),
            },
        ));
        for n in 0..MAX + 5 {
            let end = EventData::End {
                result: serde_json::json!({ "n": n }),
            };
            r.remember(&event(&format!("j{n}"), end));
        }
        let recent = r.recent();
        assert_eq!(recent.len(), MAX);
        assert_eq!(
            recent.last().unwrap().job_id.as_str(),
            format!("j{}", MAX + 4)
        );
        assert_eq!(recent[0].job_id.as_str(), "j5");
    }

    #[test]
    fn a_record_and_its_end_take_one_place() {
        let r = RecentEnds::default();
        let end = |n: u32| EventData::End {
            result: serde_json::json!({ "n": n }),
        };
        r.remember(&event("a", end(1)));
        r.remember(&event("b", end(1)));
        r.remember(&event("a", end(2)));
        let recent = r.recent();
        assert_eq!(recent.len(), 2);
        assert_eq!(recent[0].job_id.as_str(), "a");
        assert_eq!(
            recent[0].data,
            end(2),
            "the later event replaces the earlier"
        );
    }

    #[test]
    fn the_hold_is_at_most_a_lease_and_at_most_five_seconds() {
        assert_eq!(
            hold_after_outage(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        assert_eq!(
            hold_after_outage(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }
}
