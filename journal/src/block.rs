//! The on-disk block: one store value holding a run of events in sequence order (one group-commit
//! batch, split at [`BLOCK_TARGET_BYTES`]). Keyed by `b` + the sequence number of its first event
//! (big-endian, so keys sort by sequence), the value is a block-format byte followed by entries,
//! each `seq` (u64 BE), `len` (u32 BE) and `len` bytes of one event as [`crate::codec`] encodes it.
//!
//! This module owns the framing only: it never decodes an event and never touches the store.
//! Parsing never panics: a broken frame ends the block with an error, every entry before it is
//! still returned, and a bad event inside an intact frame is the event decoder's business.

/// Key prefix of the blocks.
pub const BLOCK_PREFIX: u8 = b'b';

/// The block framing written in front of every block. Bump it on any change to the framing.
pub const BLOCK_FORMAT: u8 = 1;

/// Blocks are cut once they reach this many bytes; an event larger than this is a block of its
/// own. sled 0.34 rewrites a whole leaf (up to 17 values) as one log message and moves messages
/// over 128 KiB into separate blob files that it never fsyncs, so blocks stay well below that.
pub const BLOCK_TARGET_BYTES: usize = 4096;

const ENTRY_HEADER: usize = 12;

pub fn block_key(first_seq: u64) -> [u8; 9] {
    let mut key = [BLOCK_PREFIX; 9];
    key[1..].copy_from_slice(&first_seq.to_be_bytes());
    key
}

pub fn seq_of_block_key(key: &[u8]) -> Option<u64> {
    match key {
        [BLOCK_PREFIX, rest @ ..] => Some(u64::from_be_bytes(rest.try_into().ok()?)),
        _ => None,
    }
}

/// One block ready to store: its first sequence number, the value, and how many entries it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub first_seq: u64,
    pub value: Vec<u8>,
    pub entries: usize,
}

/// Frames `entries` (encoded events in sequence order) into blocks of about
/// [`BLOCK_TARGET_BYTES`].
pub fn encode<'a>(entries: impl IntoIterator<Item = (u64, &'a [u8])>) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    let mut current: Option<Block> = None;
    for (seq, bytes) in entries {
        let len = u32::try_from(bytes.len()).expect("an event is smaller than 4 GiB");
        if let Some(b) =
            current.take_if(|b| b.value.len() + ENTRY_HEADER + bytes.len() > BLOCK_TARGET_BYTES)
        {
            blocks.push(b);
        }
        let block = current.get_or_insert_with(|| Block {
            first_seq: seq,
            value: {
                let mut v =
                    Vec::with_capacity(BLOCK_TARGET_BYTES.min(1 + ENTRY_HEADER + bytes.len()));
                v.push(BLOCK_FORMAT);
                v
            },
            entries: 0,
        });
        block.value.extend_from_slice(&seq.to_be_bytes());
        block.value.extend_from_slice(&len.to_be_bytes());
        block.value.extend_from_slice(bytes);
        block.entries += 1;
    }
    blocks.extend(current);
    blocks
}

/// Why a block's framing could not be read (the entries before it are intact).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("empty block")]
    Empty,
    #[error("unknown block format {0} (this build reads block format {BLOCK_FORMAT})")]
    UnknownFormat(u8),
    #[error("block cut short after {0} intact events")]
    Truncated(usize),
}

/// The entries of a stored block, `(seq, event bytes)`, in order. After the first error the
/// iterator ends.
pub fn entries(value: &[u8]) -> Entries<'_> {
    Entries {
        rest: value,
        read: 0,
        started: false,
        done: false,
    }
}

pub struct Entries<'a> {
    rest: &'a [u8],
    read: usize,
    started: bool,
    done: bool,
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<(u64, &'a [u8]), FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if !self.started {
            self.started = true;
            match self.rest.split_first() {
                None => return self.fail(FrameError::Empty),
                Some((&BLOCK_FORMAT, rest)) => self.rest = rest,
                Some((&v, _)) => return self.fail(FrameError::UnknownFormat(v)),
            }
        }
        if self.rest.is_empty() {
            self.done = true;
            return None;
        }
        let Some((header, rest)) = self.rest.split_first_chunk::<ENTRY_HEADER>() else {
            return self.fail(FrameError::Truncated(self.read));
        };
        let seq = u64::from_be_bytes(header[..8].try_into().expect("8 bytes"));
        let len = u32::from_be_bytes(header[8..].try_into().expect("4 bytes")) as usize;
        if rest.len() < len {
            return self.fail(FrameError::Truncated(self.read));
        }
        let (event, rest) = rest.split_at(len);
        self.rest = rest;
        self.read += 1;
        Some(Ok((seq, event)))
    }
}

impl Entries<'_> {
    fn fail<T>(&mut self, e: FrameError) -> Option<Result<T, FrameError>> {
        self.done = true;
        Some(Err(e))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(value: &[u8]) -> (Vec<(u64, Vec<u8>)>, Option<FrameError>) {
        let mut ok = Vec::new();
        for e in entries(value) {
            match e {
                Ok((seq, b)) => ok.push((seq, b.to_vec())),
                Err(e) => return (ok, Some(e)),
            }
        }
        (ok, None)
    }

    #[test]
    fn blocks_round_trip_and_split_at_the_target() {
        let events: Vec<(u64, Vec<u8>)> = (1..=100).map(|s| (s, vec![s as u8; 100])).collect();
        let blocks = encode(events.iter().map(|(s, b)| (*s, &b[..])));
        assert!(blocks.len() > 1);
        assert!(blocks.iter().all(|b| b.value.len() <= BLOCK_TARGET_BYTES));
        let mut back = Vec::new();
        for b in &blocks {
            let (entries, err) = parse(&b.value);
            assert_eq!(err, None);
            assert_eq!(entries[0].0, b.first_seq);
            assert_eq!(entries.len(), b.entries);
            back.extend(entries);
        }
        assert_eq!(back, events);
    }

    #[test]
    fn a_big_event_is_a_block_of_its_own() {
        let big = vec![7u8; BLOCK_TARGET_BYTES * 3];
        let small = [1u8; 10];
        let blocks = encode([(1, &small[..]), (2, &big[..]), (3, &small[..])]);
        let firsts: Vec<u64> = blocks.iter().map(|b| b.first_seq).collect();
        assert_eq!(firsts, vec![1, 2, 3]);
    }

    #[test]
    fn broken_framing_keeps_the_intact_prefix() {
        let blocks = encode([(5, &b"abc"[..]), (6, &b"defg"[..])]);
        let mut value = blocks[0].value.clone();
        value.truncate(value.len() - 2);
        let (ok, err) = parse(&value);
        assert_eq!(ok, vec![(5, b"abc".to_vec())]);
        assert_eq!(err, Some(FrameError::Truncated(1)));
        assert_eq!(parse(&[]).1, Some(FrameError::Empty));
        assert_eq!(parse(&[9, 1]).1, Some(FrameError::UnknownFormat(9)));
        assert_eq!(parse(&[BLOCK_FORMAT]), (vec![], None));
    }

    #[test]
    fn keys_sort_by_sequence() {
        assert!(block_key(1) < block_key(256));
        assert_eq!(seq_of_block_key(&block_key(77)), Some(77));
        assert_eq!(seq_of_block_key(b"m:other"), None);
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
    }
}
