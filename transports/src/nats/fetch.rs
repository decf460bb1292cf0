//! The fetcher: the one background task that pulls messages for this worker, and only as many as
//! `next()` callers are waiting for (the inbox shared with the Redis and nexus sources). Each
//! round sends one pull request for exactly the free slots (`batch = want`, `expires = block`)
//! to one consumer (rotating when several subjects are consumed) and hands every message to the
//! inbox the moment it arrives, so a partly filled request never delays the messages it already
//! has. The attempt is the message's delivery count less its releases (`release`). It owns the
//! backoff after failures (the client reconnects by itself); it must never settle a message.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tracing::{debug, warn};

use super::message::to_incoming;
use super::Inner;
use crate::delivery::Incoming;
use crate::source::SourceError;

pub(crate) async fn run(inner: Arc<Inner>) {
    let inbox = &inner.inbox;
    let mut backoff = crate::Backoff::RECONNECT.retrier();
    let mut turn = 0usize;
    let mut last_check = tokio::time::Instant::now();
    loop {
        inbox.wait_for_demand().await;
        if inbox.is_closed() {
            break;
        }
        let want = inbox.want();
        if want == 0 {
            continue;
        }
        turn = (turn + 1) % inner.consumers.len();
        match round(&inner, turn, want).await {
            Ok(got) => {
                backoff.reset();
                // A pull on a deleted consumer just stays empty: look now and then, when idle.
                if got == 0 && last_check.elapsed() >= CHECK_EVERY {
                    last_check = tokio::time::Instant::now();
                    recreate_if_missing(&inner).await;
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "pulling jobs from nats failed");
                let text = e.to_string().to_ascii_lowercase();
                if text.contains("consumer deleted") || text.contains("not found") {
                    recreate_if_missing(&inner).await;
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

/// How often an idle fetcher checks that its consumers still exist.
const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Creates the stream and consumers again when one is gone (deleted, or a server that lost its
/// store); the consumer handles keep working since they address consumers by name.
async fn recreate_if_missing(inner: &Inner) {
    for (subject, _) in &inner.consumers {
        let name = inner.cfg.durable_for(subject);
        match inner.jobs.consumer_info(&name).await {
            Ok(_) => continue,
            Err(e) if e.to_string().to_ascii_lowercase().contains("not found") => {
                warn!(consumer = %name, "the consumer is gone; creating it again");
                if let Err(e) = super::setup::ensure(&inner.js, &inner.cfg).await {
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

/// One pull request of `want` messages on consumer `turn`; returns how many came.
async fn round(inner: &Inner, turn: usize, want: usize) -> Result<usize, SourceError> {
    let (subject, consumer) = &inner.consumers[turn];
    let block = if inner.consumers.len() > 1 {
        // Several subjects share the fetcher: keep each pull short so none waits long.
        (inner.cfg.block / inner.consumers.len() as u32).max(Duration::from_millis(50))
    } else {
        inner.cfg.block
    };
    let patience = block + inner.cfg.command_timeout;
    let mut batch = tokio::time::timeout(
        inner.cfg.command_timeout,
        consumer
            .batch()
            .max_messages(want)
            .expires(block)
            .messages(),
    )
    .await
    .map_err(|_| SourceError::Unavailable("sending a pull request timed out".into()))?
    .map_err(|e| super::setup::map_err(&format!("pulling from {subject}"), e))?;
    let mut got = 0usize;
    loop {
        let next = match tokio::time::timeout(patience, batch.next()).await {
            Err(_) => return Ok(got),
            Ok(None) => break,
            Ok(Some(next)) => next,
        };
        let msg = next.map_err(|e| super::setup::map_err(&format!("pulling from {subject}"), e))?;
        got += 1;
        let item = admit(inner, msg).await;
        inner.inbox.deliver(vec![item]);
    }
    if got == 0 {
        // A quiet round still clears an error a previous round left.
        inner.inbox.deliver(Vec::new());
    }
    Ok(got)
}

/// Turns a delivered message into what `next()` returns.
async fn admit(inner: &Inner, msg: async_nats::jetstream::Message) -> Incoming {
    let reply = msg
        .reply
        .as_ref()
        .map(|r| r.to_string())
        .unwrap_or_default();
    let attempt = match super::message::ack_info(&reply) {
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
            debug!(subject = %msg.subject, job_id = %d.job.id, job_type = %d.job.job_type, attempt, "claimed job");
        }
        Incoming::Malformed(m) => {
            warn!(subject = %msg.subject, reason = %m.reason, attempt, "malformed job message");
        }
    }
    item
}
