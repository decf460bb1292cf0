//! The fetcher: the one background task that pulls messages for this worker, and only as many as
//! `next()` callers are waiting for (the inbox shared with the Redis and nexus sources). Each
//! round sends one pull request for exactly the free slots (`batch = want`, `expires = block`)
//! to one consumer (rotating when several subjects are consumed; subjects of several priorities,
//! `lanes`, are first asked without waiting, highest first, never for more than the free slots
//! in all) and hands every message to the
//! inbox the moment it arrives, so a partly filled request never delays the messages it already
//! has. The attempt is the message's delivery count less its releases (`release`). It owns the
//! backoff after failures (the client reconnects by itself) and what a restarted server forgot
//! ([`Suspects`]: a delivery of a completed job is acked again, one another worker claimed
//! lately is handed back for a while, neither handed out); it must never settle a message
//! otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::AckKind;
use futures_util::StreamExt as _;
use tracing::{debug, warn};

use super::lanes::{Lane, Lanes};
use super::message::to_incoming;
use super::Inner;
use crate::delivery::Incoming;
use crate::job::JobId;
use crate::source::SourceError;

pub(crate) async fn run(inner: Arc<Inner>, mut lanes: Lanes) {
    let inbox = &inner.inbox;
    let mut backoff = crate::Backoff::RECONNECT.retrier();
    let mut turn = 0usize;
    let mut last_check = tokio::time::Instant::now();
    let mut suspects = Suspects::default();
    loop {
        inbox.wait_for_demand().await;
        if inbox.is_closed() {
            break;
        }
        let want = inbox.want();
        if want == 0 {
            continue;
        }
        let pulled = match lanes.follow(&inner.jobs, &inner.cfg, &inner.known).await {
            Ok(()) => {
                turn = (turn + 1) % lanes.lanes.len();
                suspects.refresh(&inner).await;
                if lanes.flat() {
                    let block = wait_per_pull(&inner, lanes.lanes.len());
                    round(&inner, &lanes.lanes[turn], want, Some(block), &suspects).await
                } else {
                    by_priority(&inner, &lanes, turn, want, &suspects).await
                }
            }
            Err(e) => Err(e),
        };
        match pulled {
            Ok(got) => {
                backoff.reset();
                // A pull on a deleted consumer just stays empty: look now and then, when idle.
                if got == 0 && last_check.elapsed() >= CHECK_EVERY {
                    last_check = tokio::time::Instant::now();
                    recreate_if_missing(&inner, &lanes.subjects()).await;
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "pulling jobs from nats failed");
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("consumer deleted") || text.contains("not found") {
                    recreate_if_missing(&inner, &lanes.subjects()).await;
                }
                inbox.fail(e);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = inbox.wait_closed() => break,
                }
            }
        }
    }
    debug!("nats fetcher stopped");
}

/// The deliveries that may be acks the server forgot, or jobs another worker is settling.
/// nats-server 2.9 (file storage) applies an ack in memory and writes the consumer's state and
/// the stream's deletions later: killed before that, it delivers acked jobs again after its
/// restart, to any worker, possibly one whose journal does not know the job (it would run it a
/// second time; the chaos suite's nats-kill scenario saw it). It also delivers at once jobs
/// whose delivery it forgot, and a worker that finished one may still be retrying its `end` and
/// its ack against the restarted server. Any message the stream held when this source last
/// (re)connected may be such a delivery, so it is looked up in the status bucket first
/// ([`seen`]): `completed` (written with the job's `end`, which the runner publishes once the
/// success is journaled and before it acks) is acked again; a recent claim by another worker
/// is handed back (uncounted, like a release) until that worker could settle it. Messages
/// stored later cost no lookup.
#[derive(Debug, Default)]
struct Suspects {
    /// The client's connection count when `upto` was read (0: never).
    connects: u64,
    /// The job stream's last sequence then: deliveries up to it are looked up.
    upto: u64,
}

impl Suspects {
    /// After a (re)connection, reads the job stream's last sequence; until that succeeds,
    /// every delivery is a suspect.
    async fn refresh(&mut self, inner: &Inner) {
        let connects = inner.client.statistics().connects.load(Ordering::Relaxed);
        if connects == self.connects {
            return;
        }
        match inner.js.get_stream(inner.cfg.stream.clone()).await {
            Ok(s) => {
                self.upto = s.cached_info().state.last_sequence;
                self.connects = connects;
            }
            Err(e) => {
                debug!(error = %e, "reading the job stream's last sequence failed; every delivery is looked up");
                self.upto = u64::MAX;
            }
        }
    }

    /// Whether the delivery of the message at `seq` must be looked up (also when the client
    /// reconnected since `refresh`: the pull may have reached the restarted server).
    fn cover(&self, inner: &Inner, seq: u64) -> bool {
        seq <= self.upto
            || inner.client.statistics().connects.load(Ordering::Relaxed) != self.connects
    }
}

/// What the status bucket says of a suspect delivery's job.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// Its success was journaled and announced: the ack was forgotten.
    Completed,
    /// Another worker claimed it lately and may still be announcing its result (its `end` and
    /// ack wait on the server that was down): handed back for this long.
    Elsewhere(Duration),
    /// Nothing that stops it from running here (also when the lookup failed: at least once).
    Free,
}

/// Looks up a suspect delivery's job. A claim by another worker counts for the lease plus 5 s
/// after it (the status's `updated_at`), as a Redis fetcher that saw Redis fail takes over no
/// lease for that long: the other worker's settlement is retried meanwhile.
async fn seen(inner: &Inner, job: &JobId) -> Seen {
    let status = match inner.status.get(super::token(job)).await {
        Ok(Some(v)) => serde_json::from_slice::<serde_json::Value>(&v).unwrap_or_default(),
        Ok(None) => return Seen::Free,
        Err(e) => {
            debug!(job_id = %job, error = %e, "looking up the job's status failed");
            return Seen::Free;
        }
    };
    match status["status"].as_str() {
        Some("completed") => Seen::Completed,
        Some("processing") if status["worker_id"] != inner.cfg.worker_id.as_str() => {
            let hold = inner.cfg.lease + Duration::from_secs(5);
            let claimed = status["updated_at"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
            let left = claimed
                .and_then(|at| (at + hold).duration_since(SystemTime::now()).ok())
                .map(|left| left.min(hold));
            match left {
                Some(left) if !left.is_zero() => Seen::Elsewhere(left),
                _ => Seen::Free,
            }
        }
        _ => Seen::Free,
    }
}

/// How often an idle fetcher checks that its consumers still exist.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Creates the stream and consumers again when one is gone (deleted, or a server that lost its
/// store); the consumer handles keep working since they address consumers by name.
async fn recreate_if_missing(inner: &Inner, subjects: &[String]) {
    for subject in subjects {
        let name = inner.cfg.durable_for(subject);
        match inner.jobs.consumer_info(&name).await {
            Ok(_) => continue,
            Err(e) if e.to_string().to_ascii_lowercase().contains("not found") => {
                warn!(consumer = %name, "the consumer is gone; creating it again");
                if let Err(e) = super::setup::ensure(&inner.js, &inner.cfg, subjects).await {
                    warn!(error = %e, "re-creating the stream and consumers failed");
                }
                return;
            }
            Err(e) => {
                debug!(error = %e, "checking the consumer failed");
                return;
            }
        }
    }
}

/// How long one pull waits when `n` subjects share the fetcher: short enough that none waits
/// long.
fn wait_per_pull(inner: &Inner, n: usize) -> Duration {
    if n > 1 {
        (inner.cfg.block / n as u32).max(Duration::from_millis(50))
    } else {
        inner.cfg.block
    }
}

/// One round over subjects of several priorities: each subject, higher priorities first (in
/// turn within one), is asked for what it holds now without waiting, never more than `want`
/// in all; only when none had anything does one subject in turn get a waiting pull.
async fn by_priority(
    inner: &Inner,
    lanes: &Lanes,
    turn: usize,
    want: usize,
    suspects: &Suspects,
) -> Result<usize, SourceError> {
    let mut got = 0;
    for level in lanes.levels() {
        let n = level.len();
        for i in 0..n {
            if got >= want {
                return Ok(got);
            }
            got += round(inner, &level[(turn + i) % n], want - got, None, suspects).await?;
        }
    }
    if got > 0 {
        return Ok(got);
    }
    let n = lanes.lanes.len();
    let block = wait_per_pull(inner, n);
    round(inner, &lanes.lanes[turn % n], want, Some(block), suspects).await
}

/// One pull request of `want` messages on `lane`, waiting up to `block` for them (`None`: only
/// what the subject holds now); returns how many came.
async fn round(
    inner: &Inner,
    lane: &Lane,
    want: usize,
    block: Option<Duration>,
    suspects: &Suspects,
) -> Result<usize, SourceError> {
    let (subject, consumer) = (&lane.subject, &lane.consumer);
    let request = async {
        match block {
            Some(block) => {
                consumer
                    .batch()
                    .max_messages(want)
                    .expires(block)
                    .messages()
                    .await
            }
            None => consumer.fetch().max_messages(want).messages().await,
        }
    };
    let mut batch = tokio::time::timeout(inner.cfg.command_timeout, request)
        .await
        .map_err(|_| SourceError::Unavailable("sending a pull request timed out".into()))?
        .map_err(|e| super::setup::map_err(&format!("pulling from {subject}"), e))?;
    let block = block.unwrap_or_default();
    let patience = block + inner.cfg.command_timeout;
    let (mut got, mut handed) = (0usize, 0usize);
    loop {
        let next = match tokio::time::timeout(patience, batch.next()).await {
            Err(_) => return Ok(got),
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let msg = next.map_err(|e| super::setup::map_err(&format!("pulling from {subject}"), e))?;
        got += 1;
        if let Some(item) = admit(inner, msg, suspects).await {
            handed += 1;
            inner.inbox.deliver(vec![item]);
        }
    }
    if handed == 0 {
        // A quiet round still clears an error a previous round left.
        inner.inbox.deliver(Vec::new());
    }
    Ok(got)
}

/// Turns a delivered message into what `next()` returns; `None` for a forgotten ack (acked
/// again here, see [`Suspects`]).
async fn admit(
    inner: &Inner,
    msg: async_nats::jetstream::Message,
    suspects: &Suspects,
) -> Option<Incoming> {
    let reply = msg
        .reply
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let info = super::message::ack_info(&reply);
    let attempt = match info {
        Some(info) => super::release::attempt(&inner.released, &inner.cfg.stream, info).await,
        None => 1,
    };
    let item = to_incoming(
        &msg.payload,
        msg.subject.as_str(),
        &reply,
        attempt,
        inner.cfg.max_payload_bytes,
    );
    match &item {
        Incoming::Job(d) => {
            let suspect = info.filter(|i| suspects.cover(inner, i.stream_sequence));
            if let Some(info) = suspect {
                // Not acked or handed back now: it comes back after the lease, looked up again.
                match seen(inner, &d.job.id).await {
                    Seen::Completed => {
                        warn!(subject = %msg.subject, job_id = %d.job.id, attempt,
                            "a completed job was delivered again (the server forgot its ack); acking it again instead of running it");
                        if let Err(e) = inner.ack(&reply, AckKind::Ack).await {
                            warn!(job_id = %d.job.id, error = %e, "acking it again failed");
                        }
                        return None;
                    }
                    Seen::Elsewhere(hold) => {
                        warn!(subject = %msg.subject, job_id = %d.job.id, attempt, hold_ms = hold.as_millis() as u64,
                            "a job another worker claimed lately was delivered again after a server restart; handing it back until that worker could settle it");
                        let (released, stream) = (&inner.released, &inner.cfg.stream);
                        let back = async {
                            super::release::record(released, stream, info.stream_sequence).await?;
                            inner.ack(&reply, AckKind::Nak(Some(hold))).await
                        };
                        if let Err(e) = back.await {
                            warn!(job_id = %d.job.id, error = %e, "handing it back failed");
                        }
                        return None;
                    }
                    Seen::Free => {}
                }
            }
            debug!(subject = %msg.subject, job_id = %d.job.id, job_type = %d.job.job_type, attempt, "claimed job");
            inner.known.claimed(msg.subject.as_str());
        }
        Incoming::Malformed(m) => {
            warn!(subject = %msg.subject, reason = %m.reason, attempt, "malformed job message");
        }
    }
    Some(item)
}
