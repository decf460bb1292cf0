//! The journal's memory: every job's live fold, the job → events index, the damage found, and how
//! opening rebuilds them from the stored blocks. Replay is a three-stage pipeline: one thread
//! walks the store, one unframes the blocks and decodes the events, and the caller's thread folds
//! them in order (decoding and folding cost about the same; walking is cheap).
//!
//! This module only reads the store; it must never write to it.

use std::collections::HashMap;

use citadel_transports::JobId;

use crate::block;
use crate::error::Result;
use crate::event::JobEvent;
use crate::journal::Damage;
use crate::read::decode_at;
use crate::state::JobState;
use crate::store::{RawValue, Store};

/// One job in memory: its fold, the sequence numbers of its events (the job → events index,
/// rebuilt by the scan on open) and their encoded size (for retention).
#[derive(Debug)]
pub(crate) struct Tracked {
    pub(crate) state: JobState,
    pub(crate) seqs: Vec<u64>,
    pub(crate) bytes: u64,
}

impl Tracked {
    pub(crate) fn new(job_id: &JobId) -> Self {
        Self {
            state: JobState::new(job_id.clone()),
            seqs: Vec::new(),
            bytes: 0,
        }
    }
}

/// Damage found on open, with the first sequence number of the block it is in (so `compact`
/// can rewrite that block).
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub(crate) block: u64,
    pub(crate) damage: Damage,
}

#[derive(Debug, Default)]
pub(crate) struct Live {
    pub(crate) next_seq: u64,
    pub(crate) events: u64,
    pub(crate) jobs: HashMap<JobId, Tracked>,
    pub(crate) damaged: Vec<Found>,
}

/// What the decoder hands to the fold.
#[expect(
    clippy::large_enum_variant,
    reason = "events are the common case; boxing them would cost an allocation per event"
)]
enum Item {
    Event {
        block: u64,
        len: u64,
        event: JobEvent,
    },
    Damaged(Found),
}

/// Blocks handed from the store walker to the decoder per message while opening.
const BLOCK_CHUNK: usize = 64;
/// Pipeline depth (messages) between two stages.
const DEPTH: usize = 8;

impl Live {
    /// Rebuilds the fold from every stored block.
    pub(crate) fn load(store: &Store) -> Result<Self> {
        let floor = store.seq_floor()?;
        let (blocks_tx, blocks_rx) = std::sync::mpsc::sync_channel::<Vec<(u64, RawValue)>>(DEPTH);
        let (items_tx, items_rx) = std::sync::mpsc::sync_channel::<Vec<Item>>(DEPTH);
        // Folded chunks go back to the decoder, which frees the events it allocated and reuses
        // the vectors (freeing on the allocating thread is much cheaper).
        let (done_tx, done_rx) = std::sync::mpsc::channel::<Vec<Item>>();
        let blocks = store.blocks_from(0)?;
        let walker = std::thread::spawn(move || -> Result<()> {
            let mut chunk = Vec::with_capacity(BLOCK_CHUNK);
            for raw in blocks {
                chunk.push(raw?);
                if chunk.len() == BLOCK_CHUNK && blocks_tx.send(std::mem::take(&mut chunk)).is_err()
                {
                    return Ok(());
                }
            }
            let _ = blocks_tx.send(chunk);
            Ok(())
        });
        let decoder = std::thread::spawn(move || -> u64 {
            let mut high = 0;
            for chunk in blocks_rx {
                let mut items = match done_rx.try_recv() {
                    Ok(mut items) => {
                        items.clear();
                        items
                    }
                    Err(_) => Vec::with_capacity(chunk.len() * 32),
                };
                for (first, value) in chunk {
                    high = high.max(first);
                    unframe(first, &value, &mut high, &mut items);
                }
                if items_tx.send(items).is_err() {
                    break;
                }
            }
            high
        });
        let mut live = Live::default();
        for chunk in items_rx {
            for item in &chunk {
                live.fold(item);
            }
            let _ = done_tx.send(chunk);
        }
        let high = decoder.join().expect("the journal replay decoder panicked");
        walker.join().expect("the journal replay walker panicked")?;
        live.next_seq = high.max(floor) + 1;
        live.jobs.retain(|_, t| t.state.phase.is_some());
        Ok(live)
    }

    /// Folds one stored event; refused events become [`Damage`].
    fn fold(&mut self, item: &Item) {
        let (block, len, event) = match item {
            Item::Event { block, len, event } => (*block, *len, event),
            Item::Damaged(found) => return self.damaged.push(found.clone()),
        };
        let tracked = match self.jobs.get_mut(&event.job_id) {
            Some(t) => t,
            None => self
                .jobs
                .entry(event.job_id.clone())
                .or_insert_with(|| Tracked::new(&event.job_id)),
        };
        match tracked.state.apply(event) {
            Ok(()) => {
                tracked.seqs.push(event.seq);
                tracked.bytes += len;
                self.events += 1;
            }
            Err(e) => self.damaged.push(Found {
                block,
                damage: Damage {
                    seq: event.seq,
                    what: e.to_string(),
                },
            }),
        }
    }
}

/// Unframes and decodes one block into `out`, raising `high` to every sequence number seen.
fn unframe(first: u64, value: &[u8], high: &mut u64, out: &mut Vec<Item>) {
    let mut last = None;
    for entry in block::entries(value) {
        match entry {
            Ok((seq, bytes)) => {
                *high = (*high).max(seq);
                last = Some(seq);
                out.push(match decode_at(seq, bytes) {
                    Ok(event) => Item::Event {
                        block: first,
                        len: bytes.len() as u64,
                        event,
                    },
                    Err(damage) => Item::Damaged(Found {
                        block: first,
                        damage,
                    }),
                });
            }
            Err(e) => out.push(Item::Damaged(Found {
                block: first,
                damage: Damage {
                    seq: last.map_or(first, |s| s + 1),
                    what: format!("block {first}: {e}"),
                },
            })),
        }
    }
}
