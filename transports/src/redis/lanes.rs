//! The stream set the Redis fetcher reads (docs/transports.md#routing): the streams with their
//! priorities, followed live from a [`RouteFeed`] when the worker derives them from its
//! capabilities, and the read of new entries that honours the priorities. With streams of
//! several priorities, a round reads the higher ones first without blocking, one stream at a
//! time and never more than the free slots in all; only when every stream is empty does it
//! wait, without claiming anything, for any stream to get an entry its group has not seen
//! (`XREAD BLOCK` from each group's last-delivered id), and the next round claims it by
//! priority. Streams that leave the set are no longer read; what was claimed from them still
//! settles (`Stats::known`).
//!
//! It owns the set and its counters; it must never settle an entry.

use std::collections::{BTreeMap, HashSet};

use redis::aio::ConnectionManager;
use redis::streams::StreamInfoGroupsReply;
use redis::Value;
use tokio::time::Duration;
use tracing::info;

use super::config::RedisConfig;
use super::conn::{ensure_groups, map_err};
use super::reply::{self, RawEntry};
use crate::routing::{self, RouteFeed};
use crate::source::SourceError;

/// What the status reports about the stream set: the streams read now (with their priorities),
/// every stream read since the start (receipts from those may still settle) and the entries
/// claimed per stream.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub current: Vec<(String, u8)>,
    pub known: HashSet<String>,
    pub claims: BTreeMap<String, u64>,
}

/// The fetcher's view of the set.
#[derive(Debug)]
pub(crate) struct Lanes {
    feed: Option<RouteFeed>,
    set: Vec<(String, u8)>,
    rotation: usize,
}

impl Lanes {
    pub fn new(cfg: &RedisConfig) -> Self {
        let mut feed = cfg.routes.clone();
        let set = match feed.as_mut() {
            Some(f) => f.current(),
            None => routing::fixed(&cfg.streams),
        };
        Self {
            feed,
            set,
            rotation: 0,
        }
    }

    pub fn set(&self) -> &[(String, u8)] {
        &self.set
    }

    pub fn streams(&self) -> Vec<String> {
        self.set.iter().map(|(s, _)| s.clone()).collect()
    }

    /// The streams by priority, highest first.
    fn levels(&self) -> Vec<Vec<String>> {
        let mut out: Vec<(u8, Vec<String>)> = Vec::new();
        for (s, p) in &self.set {
            match out.iter_mut().find(|(q, _)| q == p) {
                Some((_, v)) => v.push(s.clone()),
                None => out.push((*p, vec![s.clone()])),
            }
        }
        out.sort_by_key(|(p, _)| std::cmp::Reverse(*p));
        out.into_iter().map(|(_, v)| v).collect()
    }

    /// Whether every stream has the same priority (then one blocking read serves them all).
    pub fn flat(&self) -> bool {
        self.set.windows(2).all(|w| w[0].1 == w[1].1)
    }

    /// Takes a changed set from the feed: creates the groups of the new streams and logs the
    /// change. Returns the new set when it changed.
    pub async fn follow(
        &mut self,
        conn: &mut ConnectionManager,
        cfg: &RedisConfig,
    ) -> Result<Option<Vec<(String, u8)>>, SourceError> {
        let Some(feed) = self.feed.as_mut().filter(|f| f.changed()) else {
            return Ok(None);
        };
        // Marked seen only once applied: a change whose groups could not be created (Redis
        // away) is tried again next round.
        let next = feed.peek();
        if next.is_empty() || next == self.set {
            feed.current();
            return Ok(None);
        }
        let added: Vec<String> = next
            .iter()
            .filter(|(s, _)| !self.set.iter().any(|(o, _)| o == s))
            .map(|(s, _)| s.clone())
            .collect();
        let removed: Vec<&String> = self
            .set
            .iter()
            .filter(|(s, _)| !next.iter().any(|(n, _)| n == s))
            .map(|(s, _)| s)
            .collect();
        ensure_groups(conn, &cfg.group, &added).await?;
        feed.current();
        info!(added = ?added, removed = ?removed, streams = next.len(), "the job streams changed");
        self.set = next.clone();
        Ok(Some(next))
    }

    /// Claims up to `want` new entries, higher priorities first; when there is none, waits up
    /// to `block` for any stream to get one (claiming nothing).
    pub async fn read_by_priority(
        &mut self,
        conn: &mut ConnectionManager,
        cfg: &RedisConfig,
        want: usize,
        block: Duration,
    ) -> Result<Vec<(String, RawEntry, u32)>, SourceError> {
        let mut out = Vec::new();
        for level in self.levels() {
            let n = level.len();
            self.rotation = self.rotation.wrapping_add(1);
            for i in 0..n {
                let left = want - out.len();
                if left == 0 {
                    return Ok(out);
                }
                let stream = &level[(self.rotation + i) % n];
                let v: Value = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&cfg.group)
                    .arg(&cfg.consumer)
                    .arg("COUNT")
                    .arg(left)
                    .arg("STREAMS")
                    .arg(stream)
                    .arg(">")
                    .query_async(conn)
                    .await
                    .map_err(map_err)?;
                for (s, entries) in reply::read(&v)? {
                    out.extend(entries.into_iter().map(|e| (s.clone(), e, 1)));
                }
            }
        }
        if out.is_empty() {
            self.wait_for_new(conn, cfg, block).await?;
        }
        Ok(out)
    }

    /// Waits up to `block` until a stream holds an entry its group has not been given.
    async fn wait_for_new(
        &self,
        conn: &mut ConnectionManager,
        cfg: &RedisConfig,
        block: Duration,
    ) -> Result<(), SourceError> {
        let streams = self.streams();
        let mut pipe = redis::pipe();
        for s in &streams {
            pipe.cmd("XINFO").arg("GROUPS").arg(s);
        }
        let infos: Vec<StreamInfoGroupsReply> = pipe.query_async(conn).await.map_err(map_err)?;
        let ids: Vec<String> = infos
            .iter()
            .map(|i| {
                i.groups
                    .iter()
                    .find(|g| g.name == cfg.group)
                    .map_or_else(|| "0".to_owned(), |g| g.last_delivered_id.clone())
            })
            .collect();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(&streams)
            .arg(&ids);
        let _: Value = cmd.query_async(conn).await.map_err(map_err)?;
        Ok(())
    }
}
