//! The Redis Streams transport (docs/transports.md, docs/wire-format.md#job-entries): a consumer group on one or more job streams.
//! It owns claiming, settling and leasing stream entries, dead-lettering, cancellation flags and
//! job events on Redis; it must never run jobs, journal anything or choose a settlement.
//!
//! How the delivery states map onto Redis:
//! - **Claiming** is done by one background fetcher (`fetch`) that reads only as many entries as
//!   `next()` callers wait for, into a buffer `next()` drains (`inbox`): `next()` is cancel-safe
//!   and never claims more than its `max`. At start the fetcher first re-reads this consumer's own
//!   pending entries (`XREADGROUP … 0`; the consumer name is stable across restarts).
//! - **Attempts** are Redis's delivery counts: 1 for a new entry, +1 for every re-read or claim.
//! - **Leases** are the entries' idle times. `extend_lease` claims the entry to itself again
//!   (`XCLAIM … IDLE 0 JUSTID`, after checking ownership, in one script), except the first
//!   renewal of an entry claimed within `claim_confirms` of now, which the claim itself stands
//!   for (its idle time runs from the claim); a worker with free
//!   slots takes entries idle longer than `lease` from anyone (`XPENDING … IDLE` + `XCLAIM`, every
//!   `reclaim_interval`), except the entries it is itself running: claimed, renewed or settled
//!   here within the lease. (`XAUTOCLAIM` cannot skip those, so a worker that missed one renewal
//!   would get its own running job a second time.) An entry the runner gave up on (neither
//!   renewed nor settled for a lease) is reclaimed here too; the journal answers it.
//! - **Ack** is `XACK` and `XDEL` in one script, so a job stream holds only unfinished work;
//!   **dead-letter** is `XADD dlq:v1:… MAXLEN` (the cap's drops counted, `dead_letters`), `XACK`
//!   and `XDEL` in one script. With `keep_acked` the entries stay and `trim` cuts each stream
//!   below the oldest entry any consumer group still needs.
//! - **Retry after `delay`** keeps the entry pending and sets its idle time to `lease - delay`
//!   without counting a delivery (`JUSTID`): it becomes claimable when the delay is over, and the
//!   claim counts the attempt. Longer delays are parked and refreshed (`park`).
//! - **Release** sets the idle time to a year ([`RELEASED_IDLE`]: claimable at once by any worker,
//!   whatever its lease) and the delivery count to one less (`RETRYCOUNT`), so the next claim, by
//!   whoever makes it, counts no new attempt.
//! - Retries rely on every worker of a group using the same lease (a worker with a longer lease
//!   picks a retried entry up later than its delay).
//! - Every settlement first checks, atomically, that this consumer still owns the entry: a worker
//!   whose lease was taken gets [`SourceError::LeaseLost`] and changes nothing. Settling an entry
//!   that is no longer pending succeeds (settlements are idempotent; a release sent again after
//!   its reply was lost changes nothing).
//! - **Effectively once across nodes**: a job's completion record (`record`) is written before
//!   the runner journals its success (`record_success`), and again with its `end`, before the
//!   runner acks; every claimed batch passes the `gate` (one script): a
//!   completed job's entry is acked and its result re-published, never handed out; a copy of a
//!   job whose owner marker another consumer holds stays pending for a lease; the rest are
//!   handed out under this consumer's marker, which renewals extend and settlements drop. No
//!   later event turns a `completed` status back. A Redis that comes back from an outage may
//!   have lost its last writes: the fetcher then writes this node's recent completion records
//!   again and holds new hand-outs briefly (`reassert`), so no node runs a job another finished.
//!
//! A restart delivers pending retries at once (the schedule is in the idle times, which a
//! re-read resets). When Redis goes away, operations fail with retryable errors, the connections
//! reconnect by themselves and the fetcher backs off (100 ms doubling to 5 s, with jitter).

mod config;
mod conn;
mod dlq;
mod entry;
mod fetch;
mod gate;
mod held;
mod lanes;
mod park;
mod producer;
mod publish;
mod reassert;
mod record;
mod reply;
mod scripts;
mod trim;

/// The stream every node's heartbeat is appended to (docs/wire-format.md#heartbeat).
pub const NODE_STATUS_STREAM: &str = "node:status:stream";
/// The approximate length the heartbeat stream is capped at.
pub const NODE_STATUS_MAXLEN: usize = 10_000;

/// The idle time a released entry gets: longer than any lease, so every worker may take it now.
pub const RELEASED_IDLE: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 3600);
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use config::{
    RedisConfig, DEFAULT_DLQ_MAX_AGE, DEFAULT_DLQ_MAX_LEN, DEFAULT_EVENTS_GRACE, DEFAULT_GROUP,
    DEFAULT_MAX_PAYLOAD, DEFAULT_STATUS_TTL, DEFAULT_STREAM,
};
pub use lanes::Stats as StreamStats;
pub use producer::RedisProducer;

use crate::delivery::{Incoming, Receipt};
use crate::events::WireEvent;
use crate::inbox::Inbox;
use crate::job::JobId;
use crate::settlement::Settlement;
use crate::source::{Capabilities, Health, JobSource, Lease, SettleContext, SourceError};
pub(crate) use held::Claim;
use park::Parked;
use scripts::{ClaimMode, DeadLetterTo, Owned, Scripts, Target};

/// State shared by the source and its background tasks.
pub(crate) struct Inner {
    cfg: RedisConfig,
    ctl: ConnectionManager,
    scripts: Scripts,
    inbox: Inbox,
    /// Entries claimed by this process and not settled yet, with when this process last
    /// claimed, renewed or tried to settle each, and their job (for its owner marker).
    outstanding: held::Outstanding,
    parked: Mutex<Vec<Parked>>,
    publisher: publish::Publisher,
    /// The `end` events published lately, written again after an outage (`reassert`).
    recent_ends: reassert::RecentEnds,
    /// The stream set and its claims (`lanes`).
    streams: Mutex<lanes::Stats>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cfg", &self.cfg)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Inner {
    /// The entry `r`, with the owner marker of `job` (or of the job it was claimed for here).
    fn target<'a>(&'a self, r: &'a Receipt, job: Option<&JobId>) -> Target<'a> {
        let job = job.cloned().or_else(|| self.outstanding.job(r));
        Target {
            stream: r.queue(),
            group: &self.cfg.group,
            consumer: &self.cfg.consumer,
            id: r.id(),
            marker: job.as_ref().map(RedisConfig::owner_key),
        }
    }

    fn track(&self, r: Receipt, claim: Claim) {
        self.outstanding.track(r, claim);
    }

    /// Whether `r`'s claim stands for its first renewal ([`held::Outstanding::claim_confirms`]).
    fn claim_confirms(&self, r: &Receipt) -> bool {
        self.outstanding.claim_confirms(r, self.cfg.lease)
    }

    /// The gate's answer on `job`'s cancellation, if still fresh; read once.
    fn fresh_cancellation(&self, job: &JobId) -> Option<bool> {
        self.outstanding.fresh_cancellation(job, self.cfg.lease)
    }

    fn touch(&self, r: &Receipt) {
        self.outstanding.touch(r);
    }

    fn forget(&self, r: &Receipt) {
        self.outstanding.forget(r);
    }

    /// Whether the reclaimer must skip `r`: this process runs it and touched it within a
    /// lease; one nobody touched for a lease is reclaimed like anyone's.
    fn is_outstanding(&self, r: &Receipt) -> bool {
        self.outstanding.touched_within(r, self.cfg.lease)
    }

    fn parked(&self) -> MutexGuard<'_, Vec<Parked>> {
        lock(&self.parked)
    }

    /// The fetcher reads `set` now.
    fn set_streams(&self, set: &[(String, u8)]) {
        let mut st = lock(&self.streams);
        st.known.extend(set.iter().map(|(s, _)| s.clone()));
        st.current = set.to_vec();
    }

    /// Every stream this source has read since it started (what a `--keep-acked` trim covers:
    /// the stream set follows the node's capabilities and may have changed since).
    fn streams_read(&self) -> Vec<String> {
        let mut all: Vec<String> = lock(&self.streams).known.iter().cloned().collect();
        all.sort();
        all
    }

    fn claimed(&self, stream: &str) {
        *lock(&self.streams)
            .claims
            .entry(stream.to_owned())
            .or_default() += 1;
    }
}

/// A [`JobSource`] on Redis Streams. Create it with [`RedisSource::connect`].
#[derive(Debug)]
pub struct RedisSource {
    inner: Arc<Inner>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    publishing: JoinHandle<()>,
}

impl RedisSource {
    /// Checks the configuration, connects, creates the consumer groups and starts fetching.
    pub async fn connect(mut cfg: RedisConfig) -> Result<Self, SourceError> {
        if let Some(mut feed) = cfg.routes.clone() {
            cfg.streams = feed.current().into_iter().map(|(s, _)| s).collect();
        }
        cfg.validate()?;
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| SourceError::Config(format!("redis url: {e}")))?;
        let mut ctl = conn::manager(&client, &cfg, cfg.command_timeout).await?;
        let reader = conn::manager(&client, &cfg, cfg.block + cfg.command_timeout).await?;
        conn::ensure_groups(&mut ctl, &cfg.group, &cfg.streams).await?;
        info!(streams = ?cfg.streams, group = %cfg.group, consumer = %cfg.consumer, lease_ms = cfg.lease.as_millis() as u64, "redis job source connected");
        // Events go out after `close()` too (a draining worker still finishes jobs), so the
        // publisher is not among the tasks `close()` waits for; it stops when the source drops.
        let scripts = Scripts::new();
        let texts = vec![
            record::EVENT.to_owned(),
            scripts.end_and_ack_text().to_owned(),
        ];
        let (publisher, publishing) = publish::Publisher::start(ctl.clone(), cfg.clone(), texts);
        let streams = lanes::Stats {
            known: cfg.streams.iter().cloned().collect(),
            ..Default::default()
        };
        let inner = Arc::new(Inner {
            cfg,
            ctl,
            scripts,
            inbox: Inbox::default(),
            outstanding: held::Outstanding::default(),
            parked: Mutex::default(),
            publisher,
            recent_ends: reassert::RecentEnds::default(),
            streams: Mutex::new(streams),
        });
        let mut tasks = vec![
            tokio::spawn(fetch::Fetcher::new(inner.clone(), reader).run()),
            tokio::spawn(park::run(inner.clone())),
        ];
        if inner.cfg.keep_acked {
            tasks.push(tokio::spawn(trim::run(inner.clone())));
        }
        Ok(Self {
            inner,
            tasks: Mutex::new(tasks),
            publishing,
        })
    }

    pub fn config(&self) -> &RedisConfig {
        &self.inner.cfg
    }

    /// Trims every job stream of this source below the oldest entry that any consumer group
    /// has not read or not acked yet (`XTRIM … MINID`), returning how many entries went. With
    /// `keep_acked` a background task does this every `trim_interval`; without it, acked
    /// entries are deleted with their ack and there is nothing to trim.
    pub async fn trim_acked(&self) -> Result<u64, SourceError> {
        let mut conn = self.inner.ctl.clone();
        trim::trim_streams(&mut conn, &self.inner.streams_read()).await
    }

    /// The streams read now, with their priorities, and the entries claimed per stream.
    pub fn stream_stats(&self) -> lanes::Stats {
        lock(&self.inner.streams).clone()
    }

    /// What a settlement script's outcome means for the runner; the entry is not tracked any
    /// more either way.
    fn settled(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        applied: Result<Owned, SourceError>,
    ) -> Result<(), SourceError> {
        // A stream or group that no longer exists (Redis restarted without persistence, or the
        // stream was deleted) holds no pending entry: there is nothing left to settle.
        let outcome = match applied {
            Err(SourceError::Busy(m)) if m.contains("NOGROUP") => Owned::Gone,
            other => other?,
        };
        self.inner.forget(receipt);
        match outcome {
            Owned::Applied => {
                debug!(receipt = %receipt, settlement = settlement.name(), "settled");
                Ok(())
            }
            Owned::Gone => {
                debug!(receipt = %receipt, settlement = settlement.name(), "entry was already settled");
                Ok(())
            }
            Owned::Stolen => {
                warn!(receipt = %receipt, settlement = settlement.name(), "not settled: another worker owns the entry");
                Err(SourceError::LeaseLost(receipt.clone()))
            }
        }
    }

    fn check_receipt(&self, r: &Receipt) -> Result<(), SourceError> {
        if lock(&self.inner.streams).known.contains(r.queue()) {
            Ok(())
        } else {
            Err(SourceError::Config(format!(
                "receipt {r} is not from a stream of this source"
            )))
        }
    }
}

impl Drop for RedisSource {
    fn drop(&mut self) {
        self.inner.inbox.close();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        self.publishing.abort();
    }
}

#[async_trait]
impl JobSource for RedisSource {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::leased(self.inner.cfg.lease)
    }

    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        self.inner.inbox.next(max, self.inner.cfg.block).await
    }

    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        self.check_receipt(receipt)?;
        let inner = &self.inner;
        inner.touch(receipt);
        let mut conn = inner.ctl.clone();
        let t = inner.target(receipt, ctx.job.map(|j| &j.id));
        let lease = inner.cfg.lease;
        let applied: Result<Owned, SourceError> = async {
            Ok(match settlement {
                Settlement::Ack => {
                    inner
                        .scripts
                        .ack(&mut conn, t, inner.cfg.keep_acked)
                        .await?
                }
                Settlement::Retry { delay } => match park::idle_for(lease, *delay) {
                    Some(idle) => {
                        inner
                            .scripts
                            .claim(&mut conn, t, idle, ClaimMode::Keep, lease)
                            .await?
                    }
                    None => {
                        let owned = inner
                            .scripts
                            .claim(&mut conn, t, 0, ClaimMode::Keep, lease)
                            .await?;
                        if owned == Owned::Applied {
                            let now = Instant::now();
                            inner.parked().push(Parked {
                                receipt: receipt.clone(),
                                due: now + *delay,
                                refreshed: now,
                            });
                        }
                        owned
                    }
                },
                Settlement::DeadLetter { reason } => {
                    let fields = dlq::fields(
                        receipt,
                        reason,
                        ctx,
                        &inner.cfg.worker_id,
                        SystemTime::now(),
                    );
                    let dlq = RedisConfig::dlq_stream(receipt.queue());
                    let to = DeadLetterTo {
                        stream: &dlq,
                        max_len: inner.cfg.dlq_max_len,
                        max_age: inner.cfg.dlq_max_age,
                        keep: inner.cfg.keep_acked,
                    };
                    let (owned, trimmed) =
                        inner.scripts.dead_letter(&mut conn, t, to, &fields).await?;
                    if let Some(t) = trimmed {
                        trim::note_dead_letters(&dlq, t, inner.cfg.dlq_max_len);
                    }
                    owned
                }
                Settlement::Release => {
                    inner
                        .scripts
                        .claim(
                            &mut conn,
                            t,
                            RELEASED_IDLE.as_millis() as u64,
                            ClaimMode::Release,
                            lease,
                        )
                        .await?
                }
            })
        }
        .await;
        self.settled(receipt, settlement, applied)
    }

    /// Publishes the `end` and acks in one script call (other settlements: `None`).
    async fn announce_and_settle(
        &self,
        announce: &WireEvent,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Option<Result<(), SourceError>> {
        if *settlement != Settlement::Ack || self.check_receipt(receipt).is_err() {
            return None;
        }
        let inner = &self.inner;
        inner.touch(receipt);
        let t = inner.target(receipt, ctx.job.map(|j| &j.id));
        let cmd = inner
            .scripts
            .end_and_ack_command(&inner.cfg, announce, &t, inner.cfg.keep_acked);
        // One script: the event is written, then the entry acked if this consumer still owns
        // it. A script Redis refuses (out of memory, a read-only replica) wrote neither.
        let answer = inner.publisher.send(vec![cmd]).await.and_then(|answers| {
            answers
                .into_iter()
                .next()
                .unwrap_or_else(|| Err(SourceError::Broker("no answer to the end's ack".into())))
        });
        let acked = match answer {
            Ok(v) => scripts::owned(&v),
            Err(e) => return Some(Err(e)),
        };
        inner.recent_ends.remember(announce);
        Some(self.settled(receipt, settlement, acked))
    }

    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        self.check_receipt(receipt)?;
        // A fresh claim's lease runs from when it was asked: it stands for the first renewal.
        if self.inner.claim_confirms(receipt) {
            return Ok(Lease::Held);
        }
        self.inner.touch(receipt);
        let mut conn = self.inner.ctl.clone();
        let t = self.inner.target(receipt, None);
        let lease = self.inner.cfg.lease;
        match self
            .inner
            .scripts
            .claim(&mut conn, t, 0, ClaimMode::Renew, lease)
            .await?
        {
            Owned::Applied => Ok(Lease::Held),
            Owned::Gone | Owned::Stolen => {
                warn!(receipt = %receipt, "lease lost");
                self.inner.forget(receipt);
                Ok(Lease::Lost)
            }
        }
    }

    /// The fetcher takes the entry over again once its lease runs out.
    fn abandon(&self, receipt: &Receipt) {
        self.inner.forget(receipt);
    }

    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        // The gate read the flag when it handed the job out, moments ago.
        if let Some(cancelled) = self.inner.fresh_cancellation(job) {
            return Ok(cancelled);
        }
        let mut conn = self.inner.ctl.clone();
        let n: i64 = redis::cmd("EXISTS")
            .arg(RedisConfig::cancel_key(job))
            .query_async(&mut conn)
            .await
            .map_err(conn::map_err)?;
        Ok(n > 0)
    }

    /// `claimed` and `start` are queued and not waited for (they go out in order, before the
    /// job's later events; a failure is logged); every other event returns once Redis has it.
    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        use crate::events::EventData::{Claimed, Start};
        if matches!(event.data, Claimed { .. } | Start { .. }) {
            self.inner.publisher.post(event);
            return Ok(());
        }
        self.inner.publisher.publish(event).await?;
        self.inner.recent_ends.remember(event);
        Ok(())
    }

    /// A job's `claimed` and `start` go out as one script call, queued without waiting like
    /// each of them alone; any other events one by one.
    async fn publish_all(&self, events: &[WireEvent]) -> Result<(), SourceError> {
        use crate::events::EventData::{Claimed, Start};
        let early = |e: &WireEvent| matches!(e.data, Claimed { .. } | Start { .. });
        match events.first() {
            Some(first) if events.iter().all(|e| early(e) && e.job_id == first.job_id) => {
                self.inner.publisher.post_all(events);
                Ok(())
            }
            _ => crate::source::publish_each(self, events).await,
        }
    }

    /// Writes the job's completion record ahead of its `end`: from then on every node's gate
    /// acks the job's entries with this result instead of handing them out.
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        if !matches!(end.data, crate::events::EventData::End { .. }) {
            return Err(SourceError::Config(format!(
                "a completion record holds an `end` event, not `{}`",
                end.event_type()
            )));
        }
        self.inner.publisher.record(end).await?;
        self.inner.recent_ends.remember(end);
        Ok(())
    }

    /// docs/wire-format.md#heartbeat: `XADD node:status:stream MAXLEN ~ 10000 * nodeId … timestamp … payload …`,
    /// then `PUBLISH node:status:{nodeId}` with the same JSON, in one round trip.
    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        let node_id = status
            .get("nodeId")
            .and_then(|v| v.as_str())
            .unwrap_or(&self.inner.cfg.worker_id)
            .to_string();
        let timestamp = status
            .get("timestamp")
            .and_then(|v| v.as_str())
            .map_or_else(|| crate::events::rfc3339(SystemTime::now()), str::to_string);
        let payload = status.to_string();
        let mut p = redis::pipe();
        p.cmd("XADD")
            .arg(NODE_STATUS_STREAM)
            .arg("MAXLEN")
            .arg("~")
            .arg(NODE_STATUS_MAXLEN)
            .arg("*")
            .arg("nodeId")
            .arg(&node_id)
            .arg("timestamp")
            .arg(&timestamp)
            .arg("payload")
            .arg(&payload)
            .ignore();
        p.cmd("PUBLISH")
            .arg(format!("node:status:{node_id}"))
            .arg(&payload)
            .ignore();
        let mut conn = self.inner.ctl.clone();
        p.query_async::<()>(&mut conn).await.map_err(conn::map_err)
    }

    async fn health(&self) -> Health {
        let mut conn = self.inner.ctl.clone();
        let started = std::time::Instant::now();
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(self.inner.cfg.command_timeout, ping).await {
            Ok(Ok(_)) => Health::up(started.elapsed()),
            Ok(Err(e)) => Health::down(conn::map_err(e).to_string()),
            Err(_) => Health::down("PING timed out"),
        }
    }

    fn route_stats(&self) -> Option<crate::routing::RouteStats> {
        Some(crate::routing::RouteStats {
            claims: self.stream_stats().claims,
        })
    }

    async fn take_buffered(&self) -> Vec<Incoming> {
        self.inner.inbox.take_buffered()
    }

    async fn close(&self) -> Vec<Incoming> {
        let tasks: Vec<_> = lock(&self.tasks).drain(..).collect();
        let patience =
            self.inner.cfg.block + self.inner.cfg.command_timeout + Duration::from_secs(1);
        self.inner.inbox.close_after("redis", tasks, patience).await
    }
}
