//! The job events the nexus transport keeps in memory to send with the attempt's settlement
//! instead of on their own: the terminal event (`end`, `error`, `cancelled`) and, before it, the
//! events that may wait a little (`start`), each under the lease that reported it. A kept event
//! that may wait goes out on its own once [`LINGER`] has passed without a settlement, or before
//! any other event of its job, so observers see every event in the order it was published (what
//! comes next waits until an early event in flight has [`Kept::landed`]). This module only holds
//! events; it must never send a request or decide a settlement.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::job::JobId;

/// How long a `start` waits for its settlement before it is sent on its own.
pub const LINGER: Duration = Duration::from_millis(100);

/// One job's kept events.
#[derive(Debug, Default)]
struct Entry {
    lease: String,
    /// Events that may wait, in the order published.
    early: Vec<Value>,
    /// Which keep of `early` started its linger (a later one restarts nothing).
    ticket: u64,
    terminal: Option<Value>,
    /// Early events taken by their linger and being sent: `true` once answered.
    flight: Option<watch::Receiver<bool>>,
}

/// What a settlement carries: the early events in order, then the terminal event.
#[derive(Debug, Default, PartialEq)]
pub struct Carried {
    pub early: Vec<Value>,
    pub terminal: Option<Value>,
}

/// Early events a linger sends: their lease, the events, and the sender of "answered".
pub type Flight = (String, Vec<Value>, watch::Sender<bool>);

/// The kept events of every unsettled job.
#[derive(Debug, Default)]
pub struct Kept {
    jobs: Mutex<HashMap<JobId, Entry>>,
    tickets: std::sync::atomic::AtomicU64,
}

impl Kept {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Entry>> {
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The entry of `job` under `lease` (a stale lease's events are dropped).
    fn entry<'a>(map: &'a mut HashMap<JobId, Entry>, job: &JobId, lease: &str) -> &'a mut Entry {
        let e = map.entry(job.clone()).or_default();
        if e.lease != lease {
            *e = Entry {
                lease: lease.to_string(),
                ..Entry::default()
            };
        }
        e
    }

    /// Keeps an event that may wait; returns the ticket its linger redeems
    /// ([`Kept::take_early_if`]), or `None` when an earlier keep's linger already runs.
    pub fn keep_early(&self, job: &JobId, lease: &str, event: Value) -> Option<u64> {
        let mut map = self.lock();
        let e = Self::entry(&mut map, job, lease);
        e.early.push(event);
        if e.early.len() > 1 {
            return None;
        }
        e.ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(e.ticket)
    }

    /// Keeps the attempt's terminal event for its settlement.
    pub fn keep_terminal(&self, job: &JobId, lease: &str, event: Value) {
        Self::entry(&mut self.lock(), job, lease).terminal = Some(event);
    }

    /// The early events of `job` (with their lease), taken to be sent now, before another event.
    pub fn take_early(&self, job: &JobId) -> Option<(String, Vec<Value>)> {
        let mut map = self.lock();
        let e = map.get_mut(job).filter(|e| !e.early.is_empty())?;
        Some((e.lease.clone(), std::mem::take(&mut e.early)))
    }

    /// [`Kept::take_early`] for the linger of keep `ticket`, if its events are still kept; the
    /// sender says when they are answered ([`Kept::landed`] waits for it).
    pub fn take_early_if(&self, job: &JobId, ticket: u64) -> Option<Flight> {
        let mut map = self.lock();
        let e = map
            .get_mut(job)
            .filter(|e| e.ticket == ticket && !e.early.is_empty())?;
        let (done, flight) = watch::channel(false);
        e.flight = Some(flight);
        Some((e.lease.clone(), std::mem::take(&mut e.early), done))
    }

    /// Waits until the early events of `job` that a linger is sending are answered (or given
    /// up), so nothing published after them overtakes them.
    pub async fn landed(&self, job: &JobId) {
        let flight = self.lock().get(job).and_then(|e| e.flight.clone());
        if let Some(mut f) = flight {
            let _ = f.wait_for(|done| *done).await;
        }
    }

    /// Everything kept for `job` under `lease`, for its settlement (nothing for another lease).
    pub fn take(&self, job: &JobId, lease: &str) -> Carried {
        let mut map = self.lock();
        match map.get(job) {
            Some(e) if e.lease == lease => {}
            _ => return Carried::default(),
        }
        let e = map.remove(job).unwrap_or_default();
        Carried {
            early: e.early,
            terminal: e.terminal,
        }
    }

    /// Puts back what a settlement that failed (and will be tried again) carried.
    pub fn put_back(&self, job: &JobId, lease: &str, carried: Carried) {
        let mut map = self.lock();
        let e = Self::entry(&mut map, job, lease);
        let later = std::mem::replace(&mut e.early, carried.early);
        e.early.extend(later);
        if e.terminal.is_none() {
            e.terminal = carried.terminal;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn a_settlement_carries_what_its_lease_kept_in_order() {
        let k = Kept::default();
        let j = job("j");
        let ticket = k.keep_early(&j, "L", json!("start")).unwrap();
        assert_eq!(k.keep_early(&j, "L", json!("more")), None);
        k.keep_terminal(&j, "L", json!("end"));
        assert_eq!(k.take(&j, "other"), Carried::default());
        let carried = k.take(&j, "L");
        assert_eq!(carried.early, vec![json!("start"), json!("more")]);
        assert_eq!(carried.terminal, Some(json!("end")));
        assert!(
            k.take_early_if(&j, ticket).is_none(),
            "nothing left to linger"
        );
        k.put_back(&j, "L", carried);
        k.keep_early(&j, "L", json!("late"));
        let again = k.take(&j, "L");
        assert_eq!(
            again.early,
            vec![json!("start"), json!("more"), json!("late")]
        );
        assert_eq!(again.terminal, Some(json!("end")));
    }

    #[test]
    fn early_events_leave_once_before_anything_else() {
        let k = Kept::default();
        let j = job("j");
        let ticket = k.keep_early(&j, "L", json!("start")).unwrap();
        assert_eq!(k.take_early(&j), Some(("L".into(), vec![json!("start")])));
        assert!(k.take_early_if(&j, ticket).is_none());
        let t2 = k.keep_early(&j, "L2", json!("start2")).unwrap();
        assert!(
            k.take_early_if(&j, ticket).is_none(),
            "an old ticket redeems nothing"
        );
        let (lease, early, done) = k.take_early_if(&j, t2).unwrap();
        assert_eq!((lease.as_str(), early), ("L2", vec![json!("start2")]));
        assert_eq!(k.take(&j, "L2"), Carried::default());
        drop(done);
    }

    #[tokio::test]
    async fn what_follows_waits_for_early_events_in_flight() {
        let k = std::sync::Arc::new(Kept::default());
        let j = job("j");
        let ticket = k.keep_early(&j, "L", json!("start")).unwrap();
        let (_, _, done) = k.take_early_if(&j, ticket).unwrap();
        let waiter = tokio::spawn({
            let (k, j) = (k.clone(), j.clone());
            async move { k.landed(&j).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "landed before the answer");
        done.send_replace(true);
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("landed never returned")
            .unwrap();
        k.landed(&job("other")).await;
    }
}
