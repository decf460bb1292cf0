//! How full each dead-letter queue is, for the metrics and the warnings: per queue
//! (`redis:dlq:v1:…`, `nats:DLQ`) the dead letters it holds, its cap and how many the cap has
//! dropped. Each transport records what its broker answered after a dead-letter move; this
//! module keeps the numbers (process-wide, so the status server reads them whatever transport
//! moved them) and decides when to warn. It must never do I/O nor drop anything itself.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

/// The fill at which a queue is reported as filling up.
pub const WARN_FRACTION: f64 = 0.8;
/// The most queues tracked (a producer must not be able to grow the map without bound).
const MAX_QUEUES: usize = 256;

/// One dead-letter queue's fill as last seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFill {
    pub queue: String,
    /// Dead letters it holds.
    pub size: u64,
    /// The most it keeps.
    pub cap: u64,
    /// Dead letters its cap (count or age) dropped since this process started watching.
    pub dropped: u64,
    /// Whether it is at [`WARN_FRACTION`] of its cap or more.
    filling: bool,
}

/// What a transport should log after recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    Quiet,
    /// The queue just reached [`WARN_FRACTION`] of its cap.
    Filling,
    /// The cap dropped this many old dead letters now.
    Dropped(u64),
}

static QUEUES: Mutex<BTreeMap<String, DeadLetterFill>> = Mutex::new(BTreeMap::new());

/// Records `queue`'s fill after a move that made the cap drop `dropped_now` dead letters.
pub fn record(queue: &str, size: u64, cap: u64, dropped_now: u64) -> Notice {
    update(queue, size, cap, |f| f.dropped += dropped_now);
    notice(queue, dropped_now)
}

/// Records `queue`'s fill where the broker counts the drops itself (`dropped_total` so far).
pub fn record_total(queue: &str, size: u64, cap: u64, dropped_total: u64) -> Notice {
    let mut before = 0;
    update(queue, size, cap, |f| {
        before = f.dropped;
        f.dropped = f.dropped.max(dropped_total);
    });
    notice(queue, dropped_total.saturating_sub(before))
}

fn lock() -> std::sync::MutexGuard<'static, BTreeMap<String, DeadLetterFill>> {
    QUEUES.lock().unwrap_or_else(PoisonError::into_inner)
}

fn update(queue: &str, size: u64, cap: u64, f: impl FnOnce(&mut DeadLetterFill)) {
    let mut map = lock();
    if !map.contains_key(queue) && map.len() >= MAX_QUEUES {
        return;
    }
    let e = map
        .entry(queue.to_owned())
        .or_insert_with(|| DeadLetterFill {
            queue: queue.to_owned(),
            size: 0,
            cap,
            dropped: 0,
            filling: false,
        });
    e.size = size;
    e.cap = cap;
    f(e);
}

/// [`Notice::Dropped`] for every drop; else [`Notice::Filling`] once when the queue crosses
/// [`WARN_FRACTION`] (again after it fell back below).
fn notice(queue: &str, dropped_now: u64) -> Notice {
    let mut map = lock();
    let Some(e) = map.get_mut(queue) else {
        return Notice::Quiet;
    };
    let full = e.cap > 0 && e.size as f64 >= e.cap as f64 * WARN_FRACTION;
    let crossed = full && !e.filling;
    e.filling = full;
    match (dropped_now, crossed) {
        (0, true) => Notice::Filling,
        (0, false) => Notice::Quiet,
        (n, _) => Notice::Dropped(n),
    }
}

/// Every tracked queue, sorted by name.
pub fn snapshot() -> Vec<DeadLetterFill> {
    lock().values().cloned().collect()
}

/// One queue's fill, when tracked.
pub fn fill(queue: &str) -> Option<DeadLetterFill> {
    lock().get(queue).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_counted_and_filling_is_said_once_per_crossing() {
        let q = "test:unit-fill";
        assert_eq!(record(q, 7, 10, 0), Notice::Quiet);
        assert_eq!(record(q, 8, 10, 0), Notice::Filling);
        assert_eq!(record(q, 9, 10, 0), Notice::Quiet);
        assert_eq!(record(q, 10, 10, 1), Notice::Dropped(1));
        assert_eq!(record(q, 10, 10, 2), Notice::Dropped(2));
        assert_eq!(fill(q).unwrap().dropped, 3);
        assert_eq!(record(q, 2, 10, 0), Notice::Quiet);
        assert_eq!(record(q, 9, 10, 0), Notice::Filling);
        let t = "test:unit-total";
        assert_eq!(record_total(t, 5, 5, 4), Notice::Dropped(4));
        assert_eq!(record_total(t, 5, 5, 4), Notice::Quiet);
        assert_eq!(record_total(t, 5, 5, 6), Notice::Dropped(2));
        assert_eq!(fill(t).unwrap().dropped, 6);
        assert!(snapshot().iter().any(|f| f.queue == q));
    }
}
