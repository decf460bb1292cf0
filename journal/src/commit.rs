//! Group commit: one flusher thread makes the journal durable for every waiting append at once.
//! An append registers the sequence number it needs on disk and waits; the flusher flushes
//! everything written so far and wakes all the appends it covered. While a flush runs, new appends
//! gather for the next one, so durability costs one fsync per batch, not per event.
//!
//! This module must never decide what is written: it only makes written things durable.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use tokio::sync::watch;

use crate::error::{JournalError, Result};
use crate::store::Store;

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

#[derive(Debug)]
pub(crate) struct GroupCommit {
    /// The highest sequence number written to the store (set by the writer, under its lock).
    written: Arc<AtomicU64>,
    requests: Arc<(Mutex<Requests>, Condvar)>,
    flushed: watch::Sender<Flushed>,
    last_error: Arc<Mutex<String>>,
    flusher: Mutex<Option<JoinHandle<()>>>,
}

impl GroupCommit {
    pub(crate) fn start(store: Store, durable_through: u64) -> Self {
        let written = Arc::new(AtomicU64::new(durable_through));
        let requests = Arc::new((Mutex::new(Requests::default()), Condvar::new()));
        let (flushed, _) = watch::channel(Flushed {
            durable: durable_through,
            failed_through: 0,
        });
        let last_error = Arc::new(Mutex::new(String::new()));
        let thread = {
            let (written, requests, flushed, last_error) = (
                written.clone(),
                requests.clone(),
                flushed.clone(),
                last_error.clone(),
            );
            std::thread::Builder::new()
                .name("journal-flusher".into())
                .spawn(move || flusher(&store, &written, &requests, &flushed, &last_error))
                .expect("spawning the journal flusher thread")
        };
        Self {
            written,
            requests,
            flushed,
            last_error,
            flusher: Mutex::new(Some(thread)),
        }
    }

    /// Records that everything up to `seq` is in the store (called in sequence order).
    pub(crate) fn written(&self, seq: u64) {
        self.written.store(seq, Ordering::SeqCst);
    }

    pub(crate) fn written_through(&self) -> u64 {
        self.written.load(Ordering::SeqCst)
    }

    /// Waits until `seq` is durable, sharing the flush with every other waiter.
    pub(crate) async fn wait_durable(&self, seq: u64) -> Result<()> {
        let mut rx = self.flushed.subscribe();
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
            Err(JournalError::Flush(
                self.last_error.lock().expect("poisoned").clone(),
            ))
        }
    }

    fn request(&self, seq: u64) {
        let (lock, cv) = &*self.requests;
        let mut req = lock.lock().expect("poisoned");
        if seq > req.wanted {
            req.wanted = seq;
            cv.notify_one();
        }
    }

    /// Stops the flusher after a last flush of everything written.
    pub(crate) fn stop(&self) {
        {
            let (lock, cv) = &*self.requests;
            let mut req = lock.lock().expect("poisoned");
            req.stop = true;
            req.wanted = u64::MAX;
            cv.notify_one();
        }
        if let Some(handle) = self.flusher.lock().expect("poisoned").take() {
            let _ = handle.join();
        }
    }
}

fn flusher(
    store: &Store,
    written: &AtomicU64,
    requests: &(Mutex<Requests>, Condvar),
    flushed: &watch::Sender<Flushed>,
    last_error: &Mutex<String>,
) {
    let (lock, cv) = requests;
    loop {
        let stop = {
            let mut req = lock.lock().expect("poisoned");
            while req.wanted
                <= flushed
                    .borrow()
                    .durable
                    .max(flushed.borrow().failed_through)
                && !req.stop
            {
                req = cv.wait(req).expect("poisoned");
            }
            req.stop
        };
        let target = written.load(Ordering::SeqCst);
        match store.flush() {
            Ok(()) => flushed.send_modify(|f| f.durable = f.durable.max(target)),
            Err(e) => {
                tracing::error!(error = %e, "journal flush failed");
                *last_error.lock().expect("poisoned") = e.to_string();
                flushed.send_modify(|f| f.failed_through = f.failed_through.max(target));
            }
        }
        if stop {
            return;
        }
    }
}
