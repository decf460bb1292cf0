//! The fetcher: the one background task that pulls messages for this worker, and only as many as
//! `next()` callers are waiting for (the inbox shared with the Redis and nexus sources). Each
//! round sends one pull request for exactly the free slots (`batch = want`, `expires = block`)
//! to one consumer (rotating when several subjects are consumed; subjects of several priorities,
//! `lanes`, are first asked without waiting, highest first, never for more than the free slots
//! in all) and hands every message to the
//! inbox the moment it arrives, so a partly filled request never delays the messages it already
//! has. The attempt is the message's delivery count less its releases (`release`). It owns the
//! backoff after failures (the client reconnects by itself) and which deliveries are looked up
//! before they are handed out (`recheck`): every redelivery, and what a restarted server may
//! have forgot ([`Suspects`]), and, when idle, acks of messages a restarted server lost
//! (`ghosts`). A job whose success is recorded is acked with its recorded
//! result, a completed one acked again, a suspect another worker claimed lately handed back for
//! a while, none handed out; it must never settle a message otherwise.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use futures_util::StreamExt as _;
use tracing::{debug, warn};

use super::lanes::{Lane, Lanes};
use super::message::to_incoming;
use super::recheck::{self, Seen};
use super::Inner;
use crate::delivery::Incoming;
use crate::events::JobStatus;
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
                // A pull on a deleted consumer just stays empty, and one a restarted server
                // left waiting for a message it lost never moves: look now and then, when idle.
                if got == 0 && last_check.elapsed() >= CHECK_EVERY {
                    last_check = tokio::time::Instant::now();
                    recreate_if_missing(&inner, &lanes.subjects()).await;
                    clear_ghosts(&inner, &mut lanes).await;
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
/// (re)connected may be such a delivery, so it is looked up like a redelivery
/// (`recheck::seen`: a recorded or `completed` job is acked again), and a recent claim by
/// another worker is handed back (uncounted, like a release) until that worker could settle
/// it. First deliveries of messages stored later cost no lookup.
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

/// Acks what each consumer waits for of messages the stream no longer holds (`ghosts`).
async fn clear_ghosts(inner: &Inner, lanes: &mut Lanes) {
    for lane in &mut lanes.lanes {
        if let Err(e) = super::ghosts::clear(inner, &mut lane.consumer, &mut lane.looked).await {
            debug!(subject = %lane.subject, error = %e, "looking for acks of lost messages failed");
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

/// Turns a delivered message into what `next()` returns; `None` for a delivery settled here
/// instead (`recheck`): a redelivery or a suspect whose job is recorded or completed is acked
/// (a recorded `end` published again first), a suspect another worker claimed lately is handed
/// back. The release count and those lookups go out together: one round trip.
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
    let max = inner.cfg.max_payload_bytes;
    let mut item = to_incoming(&msg.payload, msg.subject.as_str(), &reply, 1, max);
    let suspect = info.is_some_and(|i| suspects.cover(inner, i.stream_sequence));
    let recheck = match &item {
        Incoming::Job(d) if suspect || info.is_some_and(|i| i.delivered > 1) => Some(&d.job.id),
        _ => None,
    };
    let (attempt, seen) = tokio::join!(
        async {
            match info {
                Some(i) => super::release::attempt(&inner.released, &inner.cfg.stream, i).await,
                None => 1,
            }
        },
        async {
            match recheck {
                Some(job) => recheck::seen(inner, job, suspect).await,
                None => Seen::Free,
            }
        },
    );
    match &mut item {
        Incoming::Job(d) => {
            d.job.attempt = attempt;
            if seen != Seen::Free {
                let delivery = Redelivery {
                    subject: &msg.subject,
                    reply: &reply,
                    info,
                    job: &d.job.id,
                    attempt,
                };
                settle_seen(inner, delivery, seen).await;
                return None;
            }
            debug!(subject = %msg.subject, job_id = %d.job.id, job_type = %d.job.job_type, attempt, "claimed job");
            inner.known.claimed(msg.subject.as_str());
        }
        Incoming::Malformed(m) => {
            m.attempt = attempt;
            warn!(subject = %msg.subject, reason = %m.reason, attempt, "malformed job message");
        }
    }
    Some(item)
}

/// A delivery that is not handed out.
struct Redelivery<'a> {
    subject: &'a async_nats::Subject,
    reply: &'a str,
    info: Option<super::message::AckInfo>,
    job: &'a JobId,
    attempt: u32,
}

/// Settles a delivery its job's record or status stops from running. A failure leaves it to
/// its ack wait: it comes back after the lease and is looked up again.
async fn settle_seen(inner: &Inner, d: Redelivery<'_>, seen: Seen) {
    let Redelivery {
        subject,
        reply,
        info,
        job,
        attempt,
    } = d;
    let settled = match seen {
        Seen::Free => return,
        Seen::Recorded(end) => {
            warn!(%subject, job_id = %job, attempt,
                "a job whose success is recorded was delivered again; acking it with the recorded result instead of running it");
            let announced = inner.announce(job, Some((JobStatus::Completed, None)), end);
            match announced.await {
                Ok(()) => inner.ack(reply, AckKind::Ack).await,
                Err(e) => Err(e),
            }
        }
        Seen::Completed => {
            warn!(%subject, job_id = %job, attempt,
                "a completed job was delivered again (an ack lost or forgotten by a restarted server); acking it again instead of running it");
            inner.ack(reply, AckKind::Ack).await
        }
        Seen::Elsewhere(hold) => {
            warn!(%subject, job_id = %job, attempt, hold_ms = hold.as_millis() as u64,
                "a job another worker claimed lately was delivered again after a server restart; handing it back until that worker could settle it");
            match info {
                Some(info) => {
                    let (released, stream) = (&inner.released, &inner.cfg.stream);
                    match super::release::record(released, stream, info.stream_sequence).await {
                        Ok(()) => inner.ack(reply, AckKind::Nak(Some(hold))).await,
                        Err(e) => Err(e),
                    }
                }
                None => Ok(()),
            }
        }
    };
    if let Err(e) = settled {
        warn!(job_id = %job, error = %e, "settling it failed; it comes back after the lease");
    }
}
