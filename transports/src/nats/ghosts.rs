//! Ack-pending entries whose message is gone from the stream. nats-server 2.9 (file storage)
//! writes a work-queue stream's removal of an acked message and the consumer's state apart;
//! killed between the two, it comes back with the message gone and the consumer still waiting
//! for its ack. It tries to deliver it again after each ack wait, finds nothing and keeps the
//! entry: ack-pending forever, the consumer's ack floor held below it, until the stream's first
//! sequence passes it (never, while an older message stays). Nobody can receive that delivery,
//! so no worker can settle it the ordinary way.
//!
//! An idle fetcher looks for such entries now and then ([`clear`]). It acts when the consumer
//! counts more ack-pending messages than the stream holds between its ack floor and its last
//! delivery (a ghost for certain), or when the ack floor has not moved since its last look while
//! messages are ack-pending (a ghost, or a job still running: the stream may also keep messages
//! the consumer counts as acked, when the server was killed between the consumer's write and the
//! stream's, so the counts alone can miss a ghost). Then every sequence of that range the stream
//! no longer holds is acked by its stream sequence, once: the next look goes on above the range
//! it covered. The server looks a pending entry up by that sequence alone; for a sequence not
//! pending such an ack changes nothing (the message is gone already, acked before). This module
//! must never ack a sequence the stream still holds, of any subject: on a work-queue stream an
//! ack removes the message.

use std::collections::HashSet;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::RawMessageErrorKind;
use tracing::{debug, warn};

use super::setup::map_err;
use super::Inner;
use crate::source::SourceError;

/// The most sequences one look covers (the next look goes on from the new ack floor).
const MOST: u64 = 50_000;

/// What the looks at one consumer remember.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Looked {
    /// The ack floor the last look saw.
    floor: Option<u64>,
    /// The sequences up to this were acked by a look already, if gone.
    cleared: u64,
}

/// Acks the entries of `consumer` whose message the stream no longer holds; returns how many
/// sequences it acked (0 when it found no reason to look, or nothing gone).
pub(crate) async fn clear(
    inner: &Inner,
    consumer: &mut PullConsumer,
    looked: &mut Looked,
) -> Result<u64, SourceError> {
    let info = consumer
        .info()
        .await
        .map_err(|e| map_err("reading the consumer", e))?
        .clone();
    let floor = info.ack_floor.stream_sequence;
    let before = looked.floor.replace(floor);
    if before.is_some_and(|b| floor < b) {
        // An ack floor never goes back: this is a consumer made anew.
        looked.cleared = 0;
    }
    let stuck = before == Some(floor);
    if info.num_ack_pending == 0 {
        return Ok(0);
    }
    let from = floor.max(looked.cleared) + 1;
    let top = info
        .delivered
        .stream_sequence
        .min(from.saturating_add(MOST - 1));
    if from > top {
        return Ok(0);
    }
    let held = held(inner, from, top).await?;
    let certain = floor >= looked.cleared && held.len() < info.num_ack_pending;
    if !certain && !stuck {
        return Ok(0);
    }
    let gone: Vec<u64> = (from..=top).filter(|s| !held.contains(s)).collect();
    for seq in &gone {
        let subject = ack_subject(&inner.cfg.stream, &info.name, *seq);
        inner
            .client
            .publish(subject, "+ACK".into())
            .await
            .map_err(|e| map_err("acking a message that is gone", e))?;
    }
    inner
        .client
        .flush()
        .await
        .map_err(|e| map_err("acking messages that are gone", e))?;
    looked.cleared = top;
    let after = consumer
        .info()
        .await
        .map_err(|e| map_err("reading the consumer", e))?
        .clone();
    if after.num_ack_pending < info.num_ack_pending || after.ack_floor.stream_sequence > floor {
        warn!(consumer = %info.name, ack_pending = info.num_ack_pending, held = held.len(), ack_floor = floor,
            delivered = info.delivered.stream_sequence, gone = gone.len(), ack_pending_after = after.num_ack_pending,
            "the consumer waited for acks of messages the stream no longer holds (a server restart lost its state); acked them by sequence");
    } else {
        debug!(consumer = %info.name, from, top, gone = gone.len(),
            "acked the sequences gone between the ack floor and the last delivery");
    }
    Ok(gone.len() as u64)
}

/// The sequences in `from..=to` the stream holds, of any subject: one lookup per message held.
async fn held(inner: &Inner, from: u64, to: u64) -> Result<HashSet<u64>, SourceError> {
    let mut held = HashSet::new();
    let mut at = from;
    while at <= to {
        let next = inner
            .jobs
            .raw_message_builder()
            .sequence(at)
            .next_by_subject(">")
            .send()
            .await;
        match next {
            Ok(m) if m.sequence <= to => {
                held.insert(m.sequence);
                at = m.sequence + 1;
            }
            Ok(_) => break,
            Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
            Err(e) => return Err(map_err("reading the job stream", e)),
        }
    }
    debug!(
        from,
        to,
        held = held.len(),
        "messages held between the ack floor and the last delivery"
    );
    Ok(held)
}

/// An ack subject naming only the stream sequence (`$JS.ACK.<stream>.<consumer>.<delivered>.
/// <stream seq>.<consumer seq>.<time>.<pending>`): the server finds the pending entry by the
/// stream sequence and takes the rest from it.
fn ack_subject(stream: &str, consumer: &str, seq: u64) -> String {
    format!("$JS.ACK.{stream}.{consumer}.1.{seq}.0.0.0")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ack_subject_reads_back_as_the_sequence() {
        let s = super::ack_subject("JOBS", "workers", 42);
        let info = super::super::ack_info(&s).unwrap();
        assert_eq!((info.stream_sequence, info.delivered), (42, 1));
    }
}
