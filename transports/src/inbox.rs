//! The hand-over between the background fetcher and `next()`: a buffer of claimed entries and
//! the demand (the sum of `max` over the `next()` calls now waiting). The fetcher claims only
//! what is wanted and not yet buffered, so nothing is claimed without a free slot; `next()` only
//! drains the buffer, so dropping it never loses a claimed entry (what arrives after it is gone
//! waits for the next call). Every transport with a background fetcher uses it. This module must never talk to a server.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::delivery::Incoming;
use crate::source::SourceError;

#[derive(Debug, Default)]
struct State {
    buf: VecDeque<Incoming>,
    demand: usize,
    error: Option<SourceError>,
    closed: bool,
}

#[derive(Debug, Default)]
pub(crate) struct Inbox {
    state: Mutex<State>,
    /// Woken when entries or an error arrive, or on close.
    arrived: Notify,
    /// Woken when demand appears, or on close.
    wanted: Notify,
}

/// Takes a waiting call's demand back when the call returns or is dropped.
struct Demand<'a> {
    inbox: &'a Inbox,
    max: usize,
}

impl Drop for Demand<'_> {
    fn drop(&mut self) {
        let mut st = self.inbox.lock();
        st.demand = st.demand.saturating_sub(self.max);
    }
}

impl Inbox {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn drain(st: &mut State, max: usize) -> Vec<Incoming> {
        let n = max.min(st.buf.len());
        st.buf.drain(..n).collect()
    }

    /// Up to `max` buffered entries, waiting at most `wait` for some to arrive.
    pub async fn next(&self, max: usize, wait: Duration) -> Result<Vec<Incoming>, SourceError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let deadline = Instant::now() + wait;
        let mut demand: Option<Demand<'_>> = None;
        loop {
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            {
                let mut st = self.lock();
                if !st.buf.is_empty() {
                    return Ok(Self::drain(&mut st, max));
                }
                if st.closed {
                    return Err(SourceError::Closed);
                }
                if let Some(e) = st.error.take() {
                    return Err(e);
                }
                if demand.is_none() {
                    st.demand += max;
                    demand = Some(Demand { inbox: self, max });
                    // Every waiter: other tasks wait on `wanted` for the close, and a single
                    // permit taken by one of them would leave the fetcher asleep.
                    self.wanted.notify_waiters();
                }
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return Ok(Self::drain(&mut self.lock(), max));
            }
        }
    }

    /// How many more entries the fetcher may claim now.
    pub fn want(&self) -> usize {
        let st = self.lock();
        if st.closed {
            0
        } else {
            st.demand.saturating_sub(st.buf.len())
        }
    }

    /// Waits until there is demand or the inbox is closed.
    pub async fn wait_for_demand(&self) {
        self.wait_for_want_above(0, true).await;
    }

    /// Waits until [`Inbox::want`] exceeds `have` (entries already asked for elsewhere, such as
    /// credit granted to a pushing server) and returns it; with `or_closed`, also returns (0) once
    /// the inbox is closed.
    pub async fn wait_for_want_above(&self, have: usize, or_closed: bool) -> usize {
        loop {
            let wanted = self.wanted.notified();
            tokio::pin!(wanted);
            wanted.as_mut().enable();
            let want = self.want();
            if want > have {
                return want;
            }
            if or_closed && self.is_closed() {
                return 0;
            }
            wanted.await;
        }
    }

    /// Waits until the inbox is closed.
    pub async fn wait_closed(&self) {
        loop {
            let woken = self.wanted.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.is_closed() {
                return;
            }
            woken.await;
        }
    }

    /// Hands claimed entries over; a successful round also clears a stale error.
    pub fn deliver(&self, items: Vec<Incoming>) {
        let mut st = self.lock();
        st.error = None;
        if items.is_empty() {
            return;
        }
        st.buf.extend(items);
        drop(st);
        self.arrived.notify_waiters();
    }

    /// Reports a failed round to the next caller of `next()`.
    pub fn fail(&self, e: SourceError) {
        self.lock().error = Some(e);
        self.arrived.notify_waiters();
    }

    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Stops the hand-over.
    pub fn close(&self) {
        self.lock().closed = true;
        self.arrived.notify_waiters();
        self.wanted.notify_waiters();
    }

    /// What was claimed but never handed out.
    pub fn take_buffered(&self) -> Vec<Incoming> {
        self.lock().buf.drain(..).collect()
    }

    /// A source's `close`: closes the inbox, gives each fetcher task `patience` to finish what it
    /// is claiming (aborting one that does not), then hands back what was claimed but never
    /// handed out.
    pub async fn close_after(
        &self,
        transport: &str,
        tasks: Vec<tokio::task::JoinHandle<()>>,
        patience: std::time::Duration,
    ) -> Vec<Incoming> {
        self.close();
        for mut t in tasks {
            if tokio::time::timeout(patience, &mut t).await.is_err() {
                t.abort();
            }
        }
        let left = self.take_buffered();
        tracing::info!(unclaimed = left.len(), "{transport} job source closed");
        left
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::delivery::{Incoming, Malformed, Receipt};

    fn item(i: usize) -> Incoming {
        Incoming::Malformed(Malformed {
            receipt: Receipt::new("s", format!("{i}-0")),
            job_id: None,
            reason: "x".into(),
            attempt: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn demand_is_the_waiting_calls_max() {
        let inbox = Arc::new(Inbox::default());
        assert_eq!(inbox.want(), 0);
        let waiter = {
            let inbox = inbox.clone();
            tokio::spawn(async move { inbox.next(3, Duration::from_secs(5)).await })
        };
        inbox.wait_for_demand().await;
        assert_eq!(inbox.want(), 3);
        inbox.deliver(vec![item(1), item(2)]);
        assert_eq!(waiter.await.unwrap().unwrap().len(), 2);
        assert_eq!(inbox.want(), 0, "the demand leaves with the call");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_call_loses_nothing() {
        let inbox = Inbox::default();
        let r = tokio::time::timeout(
            Duration::from_millis(10),
            inbox.next(2, Duration::from_secs(5)),
        )
        .await;
        assert!(r.is_err());
        assert_eq!(inbox.want(), 0);
        inbox.deliver(vec![item(1), item(2), item(3)]);
        assert_eq!(
            inbox.next(2, Duration::from_secs(1)).await.unwrap().len(),
            2
        );
        assert_eq!(
            inbox.next(2, Duration::from_secs(1)).await.unwrap().len(),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn errors_reach_one_caller_and_close_ends_it() {
        let inbox = Inbox::default();
        inbox.fail(SourceError::Unavailable("down".into()));
        assert!(inbox.next(1, Duration::from_secs(1)).await.is_err());
        assert!(inbox
            .next(1, Duration::from_millis(5))
            .await
            .unwrap()
            .is_empty());
        inbox.deliver(vec![item(1)]);
        inbox.close();
        assert_eq!(inbox.take_buffered().len(), 1);
        assert_eq!(
            inbox.next(1, Duration::from_secs(1)).await,
            Err(SourceError::Closed)
        );
        assert_eq!(inbox.want(), 0);
    }

    #[tokio::test]
    async fn demand_wakes_the_fetcher_even_when_others_wait_for_the_close() {
        let inbox = Arc::new(Inbox::default());
        let closer = tokio::spawn({
            let inbox = inbox.clone();
            async move { inbox.wait_closed().await }
        });
        let fetcher = tokio::spawn({
            let inbox = inbox.clone();
            async move {
                inbox.wait_for_demand().await;
                inbox.deliver(vec![item(1)]);
            }
        });
        tokio::task::yield_now().await;
        let started = std::time::Instant::now();
        let got = inbox.next(1, Duration::from_secs(5)).await.unwrap();
        assert_eq!(got.len(), 1);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "the fetcher slept through the demand"
        );
        fetcher.await.unwrap();
        inbox.close();
        closer.await.unwrap();
    }
}
