//! Group commit: appends hand their encoded events to an in-memory pending buffer; one flusher
//! thread takes the whole buffer, writes it to the store as blocks ([`crate::block`]), flushes
//! once and wakes every append it covered. While a flush runs, new appends gather for the next
//! one, so durability costs one fsync per batch, not per event. A flush asked for within
//! [`BUSY`] of the last one's end first waits [`GATHER`], so appends that come moments apart
//! (a job's success, then the next job's start) share it too. The flusher also wakes every
//! [`FLUSH_INTERVAL`] so that events nobody waits for are on disk within that bound.
//!
//! Readers see events that are not stored yet through [`GroupCommit::find`] and
//! [`GroupCommit::unstored_from`]. This module must never decide what is written (the journal
//! has checked every event against the fold before it gets here); it only stores and flushes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::watch;

use crate::block;
use crate::error::{JournalError, Result};
use crate::store::Store;

/// How long an event appended without a waiter may stay in memory before the flusher writes it.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// A flush asked for within [`BUSY`] of the last one's end waits this long first, so that the
/// appends arriving together (a job's success and the next job's start) share one fsync.
const GATHER: Duration = Duration::from_micros(200);
const BUSY: Duration = Duration::from_millis(2);

/// One encoded event: its sequence number and bytes.
pub(crate) type Entry = (u64, Vec<u8>);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Flushed {
    /// Every sequence number up to this is durable.
    durable: u64,
    /// Flushes covering sequence numbers up to this failed.
    failed_through: u64,
}

#[derive(Debug, Default)]
struct Requests {
    wanted: u64,
    stop: bool,
}

/// Events not in the store yet, in sequence order: those being written now, then the rest.
#[derive(Debug, Default)]
struct Buffer {
    writing: Arc<Vec<Entry>>,
    pending: Vec<Entry>,
}

#[derive(Debug)]
struct Shared {
    store: Store,
    buffer: Mutex<Buffer>,
    /// Held while a batch goes from the buffer into the store, so batches land in order.
    write_lock: Mutex<()>,
    /// The highest sequence number handed to [`GroupCommit::push`].
    buffered: AtomicU64,
    /// The highest sequence number written to the store.
    written: AtomicU64,
    /// Flushes that succeeded since the start.
    flushes: AtomicU64,
    requests: (Mutex<Requests>, Condvar),
    flushed: watch::Sender<Flushed>,
    /// The first write or flush that failed (sticky: sled's errors are, until the store is
    /// reopened).
    failure: watch::Sender<Option<String>>,
}

#[derive(Debug)]
pub(crate) struct GroupCommit {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    pub(crate) fn start(store: Store, durable_through: u64) -> Self {
        let (flushed, _) = watch::channel(Flushed {
            durable: durable_through,
            failed_through: 0,
        });
        let shared = Arc::new(Shared {
            store,
            buffer: Mutex::new(Buffer::default()),
            write_lock: Mutex::new(()),
            buffered: AtomicU64::new(durable_through),
            written: AtomicU64::new(durable_through),
            flushes: AtomicU64::new(0),
            requests: (Mutex::new(Requests::default()), Condvar::new()),
            flushed,
            failure: watch::channel(None).0,
        });
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-flusher".into())
                .spawn(move || flusher(&shared))
                .expect("spawning the journal flusher thread")
        };
        Self {
            shared,
            flusher: Mutex::new(Some(thread)),
        }
    }

    /// Queues one encoded event for the next block (called in sequence order, under the
    /// journal's lock).
    pub(crate) fn push(&self, seq: u64, bytes: Vec<u8>) {
        lock(&self.shared.buffer).pending.push((seq, bytes));
        self.shared.buffered.store(seq, Ordering::SeqCst);
    }

    /// The flushes that succeeded since the journal was opened.
    pub(crate) fn flushes(&self) -> u64 {
        self.shared.flushes.load(Ordering::SeqCst)
    }

    /// The highest sequence number pushed so far.
    pub(crate) fn buffered_through(&self) -> u64 {
        self.shared.buffered.load(Ordering::SeqCst)
    }

    /// The bytes of the events among `seqs` (ascending) that are not in the store yet, in the
    /// same positions; `None` means "read it from the store".
    pub(crate) fn find(&self, seqs: &[u64]) -> Vec<Option<Vec<u8>>> {
        let buffer = lock(&self.shared.buffer);
        let lookup = |seq: u64| {
            [&buffer.writing[..], &buffer.pending[..]]
                .into_iter()
                .find_map(|part| {
                    let i = part.binary_search_by_key(&seq, |e| e.0).ok()?;
                    Some(part[i].1.clone())
                })
        };
        seqs.iter().map(|&seq| lookup(seq)).collect()
    }

    /// The events from `from_seq` on that are not in the store yet, and the first sequence
    /// number not in the store when they were taken (everything before it is stored).
    pub(crate) fn unstored_from(&self, from_seq: u64) -> (u64, Vec<Entry>) {
        let buffer = lock(&self.shared.buffer);
        let all = buffer.writing.iter().chain(&buffer.pending);
        let first = all.clone().next().map_or(u64::MAX, |e| e.0);
        (first, all.filter(|e| e.0 >= from_seq).cloned().collect())
    }

    /// Waits until `seq` is durable, sharing the flush with every other waiter.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.shared.flushed.subscribe();
        if rx.borrow().durable >= seq {
            return Ok(());
        }
        self.request(seq);
        let state = *rx
            .wait_for(|f| f.durable >= seq || f.failed_through >= seq)
            .await
            .map_err(|_| JournalError::Flush("the journal flusher stopped".into()))?;
        if state.durable >= seq {
            Ok(())
        } else {
            // `fail` records the failure before it wakes the waiters.
            Err(JournalError::Flush(self.failure().unwrap_or_default()))
        }
    }

    /// The first failed write or flush, if one failed; it never clears.
    pub(crate) fn subscribe_failure(&self) -> watch::Receiver<Option<String>> {
        self.shared.failure.subscribe()
    }

    /// The first failed write or flush, if one happened (read without subscribing).
    pub(crate) fn failure(&self) -> Option<String> {
        self.shared.failure.borrow().clone()
    }

    /// Asks the flusher to make everything through `seq` durable, without waiting for it.
    pub(crate) fn request(&self, seq: u64) {
        let (lock, cv) = &self.shared.requests;
        let mut req = lock.lock().expect("poisoned");
        if seq > req.wanted {
            req.wanted = seq;
            cv.notify_one();
        }
    }

    /// Writes every pending event to the store now, without flushing.
    pub(crate) fn write_out(&self) -> Result<()> {
        self.shared.write_out()
    }

    /// Records a failed write or flush made outside a commit round (compaction): the journal
    /// fails stop exactly as when a round fails.
    pub(crate) fn fail(&self, e: &JournalError) {
        self.shared.fail(e);
    }

    /// Writes every pending event and flushes, on the caller's thread.
    pub(crate) fn flush_now(&self) -> Result<()> {
        self.shared.round()
    }

    /// Keeps every batch out of the store while the guard lives (tests of unstored reads).
    #[cfg(test)]
    pub(crate) fn hold_writes(&self) -> std::sync::MutexGuard<'_, ()> {
        lock(&self.shared.write_lock)
    }

    /// Stops the flusher after a last write and flush of everything pending.
    pub(crate) fn stop(&self) {
        {
            let (lock, cv) = &self.shared.requests;
            let mut req = lock.lock().expect("poisoned");
            req.stop = true;
            req.wanted = u64::MAX;
            cv.notify_one();
        }
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
    }
}

impl Shared {
    fn write_out(&self) -> Result<()> {
        let _writer = lock(&self.write_lock);
        let batch = {
            let mut buffer = lock(&self.buffer);
            if buffer.pending.is_empty() {
                return Ok(());
            }
            let batch = Arc::new(std::mem::take(&mut buffer.pending));
            buffer.writing = batch.clone();
            batch
        };
        let blocks = block::encode(batch.iter().map(|(seq, bytes)| (*seq, &bytes[..])));
        let mut stored = 0;
        let mut result = Ok(());
        for b in blocks {
            result = self
                .store
                .write(vec![Store::block_op(b.first_seq, Some(b.value))]);
            if result.is_err() {
                break;
            }
            stored += b.entries;
        }
        let mut buffer = lock(&self.buffer);
        if stored > 0 {
            self.written.store(batch[stored - 1].0, Ordering::SeqCst);
        }
        // What could not be stored goes back in front of the pending events, for the next round.
        let mut unstored = batch[stored..].to_vec();
        unstored.append(&mut buffer.pending);
        buffer.pending = unstored;
        buffer.writing = Arc::default();
        result
    }

    /// Writes everything pending, flushes, and publishes what became durable (or failed).
    fn round(&self) -> Result<()> {
        let result = self.write_out().and_then(|()| {
            let target = self.written.load(Ordering::SeqCst);
            self.store.flush().map(|()| target)
        });
        match result {
            Ok(target) => {
                self.flushes.fetch_add(1, Ordering::SeqCst);
                self.flushed
                    .send_modify(|f| f.durable = f.durable.max(target));
                Ok(())
            }
            Err(e) => {
                self.fail(&e);
                Err(e)
            }
        }
    }

    /// A write or flush failed: the journal fails stop (appends refused from now on, waiters of
    /// everything buffered answered with the error).
    fn fail(&self, e: &JournalError) {
        tracing::error!(error = %e, "journal write or flush failed");
        self.failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(e.to_string());
            }
            first
        });
        let target = self.buffered.load(Ordering::SeqCst);
        self.flushed
            .send_modify(|f| f.failed_through = f.failed_through.max(target));
    }
}

fn flusher(shared: &Shared) {
    let (lock, cv) = &shared.requests;
    let mut last_round: Option<std::time::Instant> = None;
    loop {
        let stop = {
            let mut req = lock.lock().expect("poisoned");
            loop {
                let (durable, done) = {
                    let f = shared.flushed.borrow();
                    (f.durable, f.durable.max(f.failed_through))
                };
                if req.stop || req.wanted > done {
                    break;
                }
                let (guard, timeout) = cv.wait_timeout(req, FLUSH_INTERVAL).expect("poisoned");
                req = guard;
                // The timer: store events nobody is waiting for, and retry after a failure.
                if timeout.timed_out() && shared.buffered.load(Ordering::SeqCst) > durable {
                    break;
                }
            }
            req.stop
        };
        if !stop && last_round.is_some_and(|t| t.elapsed() < BUSY) {
            std::thread::sleep(GATHER);
        }
        let _ = shared.round();
        last_round = Some(std::time::Instant::now());
        if stop {
            return;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().expect("journal lock poisoned")
}
