//! Reading events back: by sequence number (the job → events index) and from a sequence number
//! on, from the stored blocks plus the events the group commit has not stored yet, so a reader
//! sees every event as soon as its append returned.
//!
//! This module never writes; undecodable entries come back as [`Damage`], never as a panic.

use std::collections::VecDeque;

use crate::block;
use crate::codec;
use crate::commit::{Entry, GroupCommit};
use crate::error::{JournalError, Result};
use crate::event::JobEvent;
use crate::journal::Damage;
use crate::store::{RawBlocks, Store};

/// Decodes the entry stored under `seq`.
pub(crate) fn decode_at(seq: u64, bytes: &[u8]) -> Result<JobEvent, Damage> {
    match codec::decode(bytes) {
        Ok(ev) if ev.seq == seq => Ok(ev),
        Ok(ev) => Err(Damage {
            seq,
            what: format!("stored under sequence number {seq} but numbered {}", ev.seq),
        }),
        Err(e) => Err(Damage {
            seq,
            what: e.to_string(),
        }),
    }
}

/// Looks up events by ascending sequence number, reading each stored block once.
pub(crate) struct BlockReader<'a> {
    store: &'a Store,
    /// The block read last: its first and last sequence numbers and its value.
    current: Option<(u64, u64, Vec<u8>)>,
}

impl<'a> BlockReader<'a> {
    pub(crate) fn new(store: &'a Store) -> Self {
        Self {
            store,
            current: None,
        }
    }

    /// The stored bytes of event `seq`, if it is stored and intact.
    pub(crate) fn get(&mut self, seq: u64) -> Result<Option<Vec<u8>>> {
        let covered = matches!(self.current, Some((first, last, _)) if first <= seq && seq <= last);
        if !covered {
            self.current = match self.store.block_at(seq)? {
                Some((first, value)) => {
                    let last = block::entries(&value)
                        .filter_map(|e| e.ok().map(|(s, _)| s))
                        .last()
                        .unwrap_or(first);
                    Some((first, last, value.to_vec()))
                }
                None => None,
            };
        }
        let Some((_, _, value)) = &self.current else {
            return Ok(None);
        };
        Ok(block::entries(value)
            .map_while(|e| e.ok())
            .find(|(s, _)| *s == seq)
            .map(|(_, bytes)| bytes.to_vec()))
    }
}

/// The events `seqs` (ascending): unstored ones from the group commit, the rest from the store.
/// Entries that are gone or undecodable are left out.
pub(crate) fn events_at(
    store: &Store,
    commit: &GroupCommit,
    seqs: &[u64],
) -> Result<Vec<JobEvent>> {
    // The buffer first: an event leaves it only once it is in the store.
    let buffered = commit.find(seqs);
    let mut reader = BlockReader::new(store);
    let mut out = Vec::with_capacity(seqs.len());
    for (&seq, bytes) in seqs.iter().zip(buffered) {
        let bytes = match bytes {
            Some(b) => b,
            None => match reader.get(seq)? {
                Some(b) => b,
                None => continue,
            },
        };
        if let Ok(ev) = decode_at(seq, &bytes) {
            out.push(ev);
        }
    }
    Ok(out)
}

/// Every event from `from_seq` on, in order: the stored blocks, then what was not stored yet
/// when the read began.
pub(crate) struct Events {
    blocks: Option<RawBlocks>,
    error: Option<JournalError>,
    ready: VecDeque<Result<JobEvent, Damage>>,
    from: u64,
    /// Everything before this was stored when the read began; the rest comes from `unstored`.
    stored_before: u64,
    unstored: std::vec::IntoIter<Entry>,
}

impl Events {
    pub(crate) fn new(store: &Store, commit: &GroupCommit, from: u64) -> Self {
        let (stored_before, unstored) = commit.unstored_from(from);
        let (blocks, error) = match store.blocks_from(from) {
            Ok(b) => (Some(b), None),
            Err(e) => (None, Some(e)),
        };
        Self {
            blocks,
            error,
            ready: VecDeque::new(),
            from,
            stored_before,
            unstored: unstored.into_iter(),
        }
    }

    fn unframe(&mut self, first: u64, value: &[u8]) {
        let mut last = None;
        for entry in block::entries(value) {
            match entry {
                Ok((seq, _)) if seq < self.from || seq >= self.stored_before => {
                    last = Some(seq);
                }
                Ok((seq, bytes)) => {
                    last = Some(seq);
                    self.ready.push_back(decode_at(seq, bytes));
                }
                Err(e) => {
                    let seq = last.map_or(first, |s| s + 1);
                    if seq >= self.from && seq < self.stored_before {
                        self.ready.push_back(Err(Damage {
                            seq,
                            what: format!("block {first}: {e}"),
                        }));
                    }
                }
            }
        }
    }
}

impl Iterator for Events {
    type Item = Result<Result<JobEvent, Damage>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.error.take() {
                return Some(Err(e));
            }
            if let Some(ev) = self.ready.pop_front() {
                return Some(Ok(ev));
            }
            match self.blocks.as_mut().and_then(Iterator::next) {
                Some(Ok((first, value))) => {
                    if first >= self.stored_before {
                        self.blocks = None;
                    } else {
                        self.unframe(first, &value);
                    }
                }
                Some(Err(e)) => {
                    self.blocks = None;
                    return Some(Err(e));
                }
                None => {
                    self.blocks = None;
                    let (seq, bytes) = self.unstored.next()?;
                    return Some(Ok(decode_at(seq, &bytes)));
                }
            }
        }
    }
}
