//! Compaction's store side: the writes that take given events out of their blocks. Each affected
//! block is rewritten in place under its own key without them (one insert, so a crash keeps
//! either the old block or the new one), or removed when nothing is left; whatever in a damaged
//! block cannot be unframed goes too.
//!
//! Which events to remove is the journal's decision (retention never picks an unsettled job);
//! this module must never choose, and it writes nothing itself: it returns the writes.

use crate::block;
use crate::error::Result;
use crate::store::{Op, Store};

/// The writes that remove `remove` (ascending sequence numbers) from their blocks, and the
/// damaged entries `damaged` (`(first seq of the block, seq)`) together with whatever cannot be
/// unframed in those blocks.
pub(crate) fn removal_ops(
    store: &Store,
    remove: &[u64],
    damaged: &[(u64, u64)],
) -> Result<Vec<Op>> {
    let mut blocks: Vec<u64> = damaged.iter().map(|d| d.0).collect();
    let mut covered: Option<(u64, u64)> = None;
    for &seq in remove {
        if covered.is_some_and(|(first, last)| first <= seq && seq <= last) {
            continue;
        }
        covered = None;
        if let Some((first, value)) = store.block_at(seq)? {
            let last = block::entries(&value)
                .filter_map(|e| e.ok().map(|(s, _)| s))
                .last()
                .unwrap_or(first);
            covered = Some((first, last));
            blocks.push(first);
        }
    }
    blocks.sort_unstable();
    blocks.dedup();
    let mut ops = Vec::new();
    for first in blocks {
        let Some((found, value)) = store.block_at(first)? else {
            continue;
        };
        if found != first {
            continue; // already gone
        }
        let mut changed = false;
        let mut kept: Vec<(u64, &[u8])> = Vec::new();
        for entry in block::entries(&value) {
            match entry {
                Ok((seq, _))
                    if remove.binary_search(&seq).is_ok() || damaged.contains(&(first, seq)) =>
                {
                    changed = true
                }
                Ok(e) => kept.push(e),
                Err(_) => changed = true,
            }
        }
        if !changed {
            continue;
        }
        let mut rewritten = block::encode(kept).into_iter();
        // The block keeps its key (at or before every sequence number it holds). Part of one
        // block always fits in one block; any further piece would start after it.
        match rewritten.next() {
            None => ops.push(Store::block_op(first, None)),
            Some(b) => ops.push(Store::block_op(first, Some(b.value))),
        }
        ops.extend(rewritten.map(|b| Store::block_op(b.first_seq, Some(b.value))));
    }
    Ok(ops)
}
