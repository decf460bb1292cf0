//! The fetcher: the one background task that claims entries for this consumer, and only as many
//! as `next()` callers are waiting for (see `inbox`). Each round does one of, in this order:
//! 1. recovery (once, at start): re-read this consumer's own pending entries (`XREADGROUP … 0`),
//!    left over from a previous run under the same name;
//! 2. reclaim (every `reclaim_interval`): `XPENDING … IDLE lease` finds entries whose lease ran
//!    out (dead workers, due retries, released entries) and `XCLAIM` takes them, skipping the
//!    ones this process is still running;
//! 3. a read of new entries: a blocking `XREADGROUP … >` when all streams have one priority,
//!    else the higher priorities first (`lanes`). While a backlog waits (the last read got all
//!    it asked for), one script call reads without waiting and gates what it read
//!    (`gate::Gate::read`), a round trip fewer before the jobs run; it falls back to the
//!    blocking read when nothing was new.
//!
//! The stream set may change between rounds (`lanes`: routing follows the node's capabilities);
//! a round reads the set of its start.
//!
//! After Redis failed or stalled (an outage, a `docker pause`: its clock ran on, so every lease
//! looks expired when it answers again), the fetcher takes over no lease for [`stall_guard`]:
//! live owners get the time to renew their leases and settle first (found by the chaos suite: a
//! job whose success was journaled ran again on another worker after a pause).
//!
//! After any failure, the first round that reaches Redis again writes this node's recent
//! completion records again and no new entry is handed out for `hold_after_outage` (`reassert`:
//! a Redis restarted under `appendfsync everysec` may have forgotten records, acks and claims of
//! its last second; a forgotten claim makes an entry new again, for any node to read).
//!
//! Every batch of claimed job entries passes the `gate` in one script call before anything is
//! handed out: a completed job's entry is acked and its `end` re-published, a copy of a job
//! another consumer runs is held pending for the lease, the rest are handed out under this
//! consumer's owner marker. A gate call that fails hands nothing out: the batch's entries stay
//! pending and come back after the lease.
//!
//! It owns the blocking connection and the backoff after failures; it must never settle an entry
//! (but for acking a completed job's) or block anything but itself.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::Value;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::conn::{ensure_groups, map_err};
use super::entry::to_incoming;
use super::gate::{Ask, Gate, Gated, Verdict};
use super::lanes::Lanes;
use super::reassert;
use super::reply::{self, RawEntry};
use super::Claim;
use super::Inner;
use crate::delivery::{Incoming, Receipt};
use crate::source::SourceError;

/// How many pending lines one `XPENDING` page asks for, and how many pages a reclaim round reads
/// per stream at most.
const PENDING_PAGE: usize = 100;
const PENDING_PAGES: usize = 10;

#[derive(Debug)]
struct Recovery {
    /// The streams at the start, each re-read in turn.
    streams: Vec<String>,
    stream: usize,
    cursor: String,
}

#[derive(Debug)]
pub(crate) struct Fetcher {
    inner: Arc<Inner>,
    conn: ConnectionManager,
    recovery: Option<Recovery>,
    last_reclaim: Option<Instant>,
    /// When Redis last failed or answered far too late.
    stalled: Option<Instant>,
    rotation: usize,
    lanes: Lanes,
    backoff: crate::Retrier,
    gate: Gate,
    /// A failure happened since this node's recent completion records were last written.
    reassert: bool,
    /// The last read claimed all it asked for, or saw entries after its last: the next read
    /// asks without waiting and gates in the same call (one round trip instead of two).
    backlog: bool,
}

/// An answer later than this (beyond a blocking read's own wait) means Redis stalled.
const STALL: Duration = Duration::from_secs(1);

/// How long after a stall no lease is taken over: one lease, plus the longest pause between the
/// retries of the owners' renewals and settlements (`Backoff::RECONNECT`, at most 5 s).
fn stall_guard(lease: Duration) -> Duration {
    lease + Duration::from_secs(5)
}

impl Fetcher {
    pub fn new(inner: Arc<Inner>, conn: ConnectionManager) -> Self {
        let lanes = Lanes::new(&inner.cfg);
        inner.set_streams(lanes.set());
        Self {
            recovery: Some(Recovery {
                streams: lanes.streams(),
                stream: 0,
                cursor: "0".into(),
            }),
            inner,
            conn,
            lanes,
            last_reclaim: None,
            stalled: None,
            rotation: 0,
            backoff: crate::Backoff::RECONNECT.retrier(),
            gate: Gate::new(),
            reassert: false,
            backlog: false,
        }
    }

    pub async fn run(mut self) {
        let inner = self.inner.clone();
        let inbox = &inner.inbox;
        loop {
            inbox.wait_for_demand().await;
            let want = inbox.want();
            if inbox.is_closed() {
                break;
            }
            if want == 0 {
                continue;
            }
            match self.round(want).await {
                Ok(items) => {
                    self.backoff.reset();
                    self.inner.inbox.deliver(items);
                }
                Err(e) => {
                    self.stalled = Some(Instant::now());
                    self.reassert = true;
                    let delay = self.backoff.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "fetching jobs from redis failed");
                    if matches!(&e, SourceError::Busy(m) if m.contains("NOGROUP") || m.contains("UNBLOCKED"))
                    {
                        // Every stream read now: those that joined the set after the start too.
                        let streams = self.lanes.streams();
                        let group = &self.inner.cfg.group;
                        if let Err(e) = ensure_groups(&mut self.conn, group, &streams).await {
                            warn!(error = %e, "re-creating the consumer group failed");
                        }
                    }
                    self.inner.inbox.fail(e);
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = self.inner.inbox.wait_closed() => break,
                    }
                }
            }
        }
        debug!("fetcher stopped");
    }

    async fn round(&mut self, want: usize) -> Result<Vec<Incoming>, SourceError> {
        if self.reassert {
            let ends = self.inner.recent_ends.recent();
            reassert::rewrite(&mut self.conn, &self.inner.cfg, &ends).await?;
            self.reassert = false;
            info!(
                records = ends.len(),
                "redis answers again: this node's recent completion records are written again"
            );
        }
        if let Some(set) = self.lanes.follow(&mut self.conn, &self.inner.cfg).await? {
            self.inner.set_streams(&set);
        }
        if let Some(left) = self.holding() {
            tokio::time::sleep(left.min(self.inner.cfg.block)).await;
            return Ok(Vec::new());
        }
        if self.recovery.is_some() {
            return self.recover(want).await;
        }
        let interval = self.inner.cfg.reclaim_interval;
        let since = self.last_reclaim.map(|t| t.elapsed());
        // The guard holds on the first reclaim too: a fetcher whose very first rounds failed
        // must not take over the leases of live owners that could not renew meanwhile.
        let guarded = self
            .stalled
            .is_some_and(|t| t.elapsed() < stall_guard(self.inner.cfg.lease));
        if !guarded && since.is_none_or(|since| since >= interval) {
            self.last_reclaim = Some(Instant::now());
            return self.reclaim(want).await;
        }
        let block = match since.and_then(|since| interval.checked_sub(since)) {
            Some(left) if !left.is_zero() => self.inner.cfg.block.min(left),
            _ => self.inner.cfg.block,
        };
        let asked = Instant::now();
        let read = self.read_new(want, block).await;
        if asked.elapsed() > block + STALL {
            self.stalled = Some(Instant::now());
        }
        read
    }

    /// How much longer no entry is handed out after the last failure (`reassert`).
    fn holding(&self) -> Option<Duration> {
        let since = self.stalled?.elapsed();
        reassert::hold_after_outage(self.inner.cfg.lease)
            .checked_sub(since)
            .filter(|left| !left.is_zero())
    }

    /// Re-reads this consumer's own pending entries, one page of one stream per round.
    async fn recover(&mut self, want: usize) -> Result<Vec<Incoming>, SourceError> {
        let cfg = &self.inner.cfg;
        let Some(rec) = self.recovery.as_mut() else {
            return Ok(Vec::new());
        };
        let stream = rec.streams[rec.stream].clone();
        let v: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg("COUNT")
            .arg(want)
            .arg("STREAMS")
            .arg(&stream)
            .arg(&rec.cursor)
            .query_async(&mut self.conn)
            .await
            .map_err(map_err)?;
        let entries: Vec<RawEntry> = reply::read(&v)?.into_iter().flat_map(|(_, e)| e).collect();
        let Some(last) = entries.last() else {
            rec.stream += 1;
            rec.cursor = "0".into();
            if rec.stream == rec.streams.len() {
                self.recovery = None;
                debug!(consumer = %cfg.consumer, "own pending entries recovered");
            }
            return Ok(Vec::new());
        };
        rec.cursor = last.id.clone();
        let counts = self.pending_counts(&stream, &entries).await?;
        let batch = entries
            .into_iter()
            .zip(counts)
            .map(|(e, count)| (stream.clone(), e, count))
            .collect();
        let out = self.admit(batch, None).await?;
        for item in &out {
            info!(stream = %stream, entry_id = %item.receipt().id(), attempt = item.attempt(), "recovered own pending entry");
        }
        Ok(out)
    }

    /// The delivery count of each entry (after this delivery).
    async fn pending_counts(
        &mut self,
        stream: &str,
        entries: &[RawEntry],
    ) -> Result<Vec<u32>, SourceError> {
        let mut pipe = redis::pipe();
        for e in entries {
            pipe.cmd("XPENDING")
                .arg(stream)
                .arg(&self.inner.cfg.group)
                .arg(&e.id)
                .arg(&e.id)
                .arg(1);
        }
        let lines: Vec<Value> = pipe.query_async(&mut self.conn).await.map_err(map_err)?;
        lines
            .iter()
            .map(|l| Ok(reply::pending(l)?.first().map_or(1, |p| p.deliveries)))
            .collect()
    }

    /// Takes over entries whose lease ran out, up to `want`.
    async fn reclaim(&mut self, want: usize) -> Result<Vec<Incoming>, SourceError> {
        let cfg = self.inner.cfg.clone();
        let lease_ms = cfg.lease.as_millis() as u64;
        let mut out = Vec::new();
        for stream in &self.lanes.streams() {
            let mut start = "-".to_owned();
            for _ in 0..PENDING_PAGES {
                if out.len() >= want {
                    return Ok(out);
                }
                let asked = Instant::now();
                let v: Value = redis::cmd("XPENDING")
                    .arg(stream)
                    .arg(&cfg.group)
                    .arg("IDLE")
                    .arg(lease_ms)
                    .arg(&start)
                    .arg("+")
                    .arg(PENDING_PAGE)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(map_err)?;
                if asked.elapsed() > STALL {
                    info!(
                        waited_ms = asked.elapsed().as_millis() as u64,
                        "redis stalled; taking over no lease for a while"
                    );
                    self.stalled = Some(Instant::now());
                    return Ok(out);
                }
                let lines = reply::pending(&v)?;
                let Some(last) = lines.last() else { break };
                start = format!("({}", last.id);
                let full_page = lines.len() == PENDING_PAGE;
                let candidates: Vec<_> = lines
                    .into_iter()
                    .filter(|p| {
                        !self
                            .inner
                            .is_outstanding(&Receipt::new(stream.as_str(), p.id.as_str()))
                    })
                    .take(want - out.len())
                    .collect();
                if !candidates.is_empty() {
                    let claimed_at = Instant::now();
                    let mut cmd = redis::cmd("XCLAIM");
                    cmd.arg(stream)
                        .arg(&cfg.group)
                        .arg(&cfg.consumer)
                        .arg(lease_ms);
                    for p in &candidates {
                        cmd.arg(&p.id);
                    }
                    let v: Value = cmd.query_async(&mut self.conn).await.map_err(map_err)?;
                    let mut batch = Vec::new();
                    for entry in reply::entries(&v)? {
                        let Some(p) = candidates.iter().find(|p| p.id == entry.id) else {
                            continue;
                        };
                        info!(stream = %stream, entry_id = %p.id, from = %p.consumer, idle_ms = p.idle_ms, "claimed an entry whose lease ran out");
                        batch.push((stream.clone(), entry, p.deliveries.saturating_add(1)));
                    }
                    out.extend(self.admit(batch, Some(claimed_at)).await?);
                }
                if !full_page {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A blocking read of new entries, never asking for more than `want` in all.
    async fn read_new(
        &mut self,
        want: usize,
        block: Duration,
    ) -> Result<Vec<Incoming>, SourceError> {
        let cfg = &self.inner.cfg;
        let asked = Instant::now();
        if !self.lanes.flat() {
            let batch = self
                .lanes
                .read_by_priority(&mut self.conn, cfg, want, block)
                .await?;
            return self.admit(batch, Some(asked)).await;
        }
        let all = self.lanes.streams();
        let n = all.len();
        // COUNT applies per stream: split `want` so the total can never exceed it.
        let (count, streams): (usize, Vec<&String>) = if want >= n {
            (want / n, all.iter().collect())
        } else {
            self.rotation = (self.rotation + want) % n;
            let picked = (0..want).map(|i| &all[(self.rotation + i) % n]).collect();
            (1, picked)
        };
        if self.backlog {
            let gated = self.gate.read(&mut self.conn, cfg, &streams, count).await?;
            self.backlog = gated.more;
            if !gated.verdicts.is_empty() {
                let judged = self.judge(gated);
                return Ok(self.hand_out(judged, Some(asked)));
            }
        }
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&cfg.group)
            .arg(&cfg.consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis().max(1) as u64)
            .arg("STREAMS");
        for s in &streams {
            cmd.arg(s.as_str());
        }
        for _ in &streams {
            cmd.arg(">");
        }
        let v: Value = cmd.query_async(&mut self.conn).await.map_err(map_err)?;
        let batch = reply::read(&v)?
            .into_iter()
            .flat_map(|(stream, entries)| entries.into_iter().map(move |e| (stream.clone(), e, 1)))
            .collect::<Vec<_>>();
        // As many as asked for: more may wait, which the next round reads and gates at once.
        self.backlog = batch.len() >= want;
        self.admit(batch, Some(asked)).await
    }

    /// Parses what a read-and-gate call claimed (first deliveries), each with its verdict.
    fn judge(&self, gated: Gated) -> Vec<(Incoming, Option<Verdict>)> {
        let max = self.inner.cfg.max_payload_bytes;
        let mut verdicts = gated.verdicts.into_iter();
        let mut judged = Vec::new();
        for (stream, entries) in gated.read {
            for entry in entries {
                let verdict = verdicts.next().flatten();
                // A new entry (`>`) always has its fields.
                let Some(fields) = entry.fields else { continue };
                let item = to_incoming(&stream, &entry.id, &fields, 1, max);
                // An entry the script did not gate is one the parser rejects: handed out as
                // malformed, as `admit` does.
                let verdict = match (&item, verdict) {
                    (Incoming::Malformed(_), None) => Some(Verdict::Run { cancelled: false }),
                    (_, verdict) => verdict,
                };
                judged.push((item, verdict));
            }
        }
        judged
    }

    /// Turns claimed entries (stream, entry, delivery count) into what `next()` returns,
    /// passing the jobs through the gate in one call, and hands them out (`hand_out`); an
    /// entry deleted from the stream while pending is acked away.
    async fn admit(
        &mut self,
        batch: Vec<(String, RawEntry, u32)>,
        claimed_at: Option<Instant>,
    ) -> Result<Vec<Incoming>, SourceError> {
        let mut items = Vec::with_capacity(batch.len());
        for (stream, entry, attempt) in batch {
            let Some(fields) = entry.fields else {
                warn!(stream = %stream, entry_id = %entry.id, "pending entry was deleted from the stream; dropping it");
                let _: Value = redis::cmd("XACK")
                    .arg(&stream)
                    .arg(&self.inner.cfg.group)
                    .arg(&entry.id)
                    .query_async(&mut self.conn)
                    .await
                    .map_err(map_err)?;
                continue;
            };
            let max = self.inner.cfg.max_payload_bytes;
            items.push(to_incoming(&stream, &entry.id, &fields, attempt, max));
        }
        let asks: Vec<Ask<'_>> = items
            .iter()
            .filter_map(|i| match i {
                Incoming::Job(d) => Some(Ask {
                    stream: d.receipt.queue(),
                    id: d.receipt.id(),
                    job: &d.job.id,
                }),
                Incoming::Malformed(_) => None,
            })
            .collect();
        let mut verdicts = self
            .gate
            .decide(&mut self.conn, &self.inner.cfg, &asks)
            .await?
            .into_iter();
        let judged = items
            .into_iter()
            .map(|item| {
                let verdict = match &item {
                    Incoming::Job(_) => verdicts.next(),
                    Incoming::Malformed(_) => Some(Verdict::Run { cancelled: false }),
                };
                (item, verdict)
            })
            .collect();
        Ok(self.hand_out(judged, claimed_at))
    }

    /// Hands out each item the gate let through, and marks it as running here, with when its
    /// claim was asked (`claimed_at`: none for a re-read, which leaves the lease as it was) and
    /// the gate's answer on its cancellation. A job without a verdict is held (it stays pending
    /// and comes back after the lease); a malformed entry the gate acked as completed or held
    /// is not handed out either.
    fn hand_out(
        &mut self,
        judged: Vec<(Incoming, Option<Verdict>)>,
        claimed_at: Option<Instant>,
    ) -> Vec<Incoming> {
        let mut out = Vec::with_capacity(judged.len());
        for (item, verdict) in judged {
            let verdict = verdict.unwrap_or(Verdict::Held);
            if !self.passes(&item, verdict) {
                continue;
            }
            let job = match &item {
                Incoming::Job(d) => {
                    let cancelled = matches!(verdict, Verdict::Run { cancelled: true });
                    Some((d.job.id.clone(), cancelled))
                }
                Incoming::Malformed(m) => {
                    warn!(receipt = %m.receipt, reason = %m.reason, "malformed job entry");
                    None
                }
            };
            self.inner.claimed(item.receipt().queue());
            let claim = Claim {
                job,
                at: claimed_at,
            };
            self.inner.track(item.receipt().clone(), claim);
            out.push(item);
        }
        out
    }

    /// Logs the gate's verdict on a delivery; true when it is handed out.
    fn passes(&self, item: &Incoming, verdict: Verdict) -> bool {
        let Incoming::Job(d) = item else {
            return matches!(verdict, Verdict::Run { .. });
        };
        let (receipt, job_id, attempt) = (&d.receipt, &d.job.id, d.job.attempt);
        match verdict {
            Verdict::Run { .. } => {
                debug!(receipt = %receipt, job_id = %job_id, job_type = %d.job.job_type, attempt, "claimed job");
                true
            }
            Verdict::Completed => {
                warn!(receipt = %receipt, job_id = %job_id,
                    "a completed job was delivered again; acked and its result re-published instead of running it");
                false
            }
            Verdict::Held => {
                info!(receipt = %receipt, job_id = %job_id,
                    "another consumer runs this job; the copy stays pending for the lease");
                false
            }
        }
    }
}
