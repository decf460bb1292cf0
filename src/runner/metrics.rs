//! What the runner measures beyond its plain [`super::Counters`]: jobs by type and outcome,
//! handler durations by type, queue wait, durable journal appends, lease renewals and
//! redeliveries. A small registry of atomics and fixed-bucket histograms (no metrics crate);
//! the status server renders it as Prometheus text. Recording is cheap and never fails; this
//! module never does I/O.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Upper bounds (seconds) of the job duration and queue wait buckets.
pub const JOB_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.025, 0.1, 0.25, 1.0, 5.0, 30.0, 120.0, 600.0, 3600.0,
];
/// Upper bounds (seconds) of the journal append buckets.
pub const JOURNAL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1.0,
];
/// Distinct job types tracked by name; further types are counted as `other` (a producer must
/// not be able to grow the registry without bound).
pub const MAX_TYPES: usize = 64;

/// A histogram with fixed bucket bounds.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative); the last one is `+Inf`.
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

/// A consistent-enough copy of a histogram, cumulative as Prometheus wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations ≤ bound)`, the last bound being `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, total));
        }
        HistogramSnapshot {
            buckets,
            count: total,
            sum_seconds: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
        }
    }
}

/// The runner's metric registry.
#[derive(Debug)]
pub struct JobMetrics {
    outcomes: Mutex<BTreeMap<(String, &'static str), u64>>,
    durations: Mutex<BTreeMap<String, Arc<Histogram>>>,
    /// From `enqueuedAt` to the start of the first attempt.
    pub queue_wait: Histogram,
    /// Durable journal appends (each waits for a group-commit flush).
    pub journal_append: Histogram,
    pub lease_renewals: AtomicU64,
    pub leases_lost: AtomicU64,
    /// Deliveries that were not a job's first attempt.
    pub redeliveries: AtomicU64,
}

impl Default for JobMetrics {
    fn default() -> Self {
        Self {
            outcomes: Mutex::default(),
            durations: Mutex::default(),
            queue_wait: Histogram::new(JOB_BUCKETS),
            journal_append: Histogram::new(JOURNAL_BUCKETS),
            lease_renewals: AtomicU64::new(0),
            leases_lost: AtomicU64::new(0),
            redeliveries: AtomicU64::new(0),
        }
    }
}

impl JobMetrics {
    /// The label a job type is counted under: itself, or `other` once [`MAX_TYPES`] are known.
    fn label<V>(map: &BTreeMap<String, V>, job_type: &str) -> String {
        if map.contains_key(job_type) || map.len() < MAX_TYPES {
            job_type.to_string()
        } else {
            "other".to_string()
        }
    }

    /// Counts one attempt of `job_type` that ended with `outcome` (`succeeded`, `failed`, ...).
    pub fn outcome(&self, job_type: &str, outcome: &'static str) {
        let mut map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        let known = map.keys().any(|(t, _)| t == job_type);
        let label = if known || distinct_types(&map) < MAX_TYPES {
            job_type.to_string()
        } else {
            "other".to_string()
        };
        *map.entry((label, outcome)).or_insert(0) += 1;
    }

    /// Records how long a handler of `job_type` ran.
    pub fn duration(&self, job_type: &str, d: Duration) {
        let hist = {
            let mut map = self
                .durations
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let label = Self::label(&map, job_type);
            map.entry(label)
                .or_insert_with(|| Arc::new(Histogram::new(JOB_BUCKETS)))
                .clone()
        };
        hist.observe(d);
    }

    /// `((type, outcome), count)`, sorted.
    pub fn outcomes(&self) -> Vec<((String, &'static str), u64)> {
        let map = self.outcomes.lock().unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    /// Handler durations by type, sorted by type.
    pub fn durations(&self) -> Vec<(String, HistogramSnapshot)> {
        let map = self
            .durations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        map.iter().map(|(t, h)| (t.clone(), h.snapshot())).collect()
    }
}

/// How many job types the outcome map holds (its keys are sorted by type).
fn distinct_types(map: &BTreeMap<(String, &'static str), u64>) -> usize {
    let mut last: Option<&str> = None;
    let mut n = 0;
    for (t, _) in map.keys() {
        if last != Some(t.as_str()) {
            n += 1;
            last = Some(t);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative() {
        let h = Histogram::new(&[0.01, 1.0]);
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(500));
        h.observe(Duration::from_secs(5));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.01, 1), (1.0, 2), (f64::INFINITY, 3)]);
        assert_eq!(s.count, 3);
        assert!((s.sum_seconds - 5.505).abs() < 1e-9);
    }

    #[test]
    fn job_types_are_bounded() {
        let m = JobMetrics::default();
        for i in 0..MAX_TYPES + 10 {
            m.outcome(&format!("t{i}"), "succeeded");
            m.duration(&format!("t{i}"), Duration::from_millis(1));
        }
        m.outcome("t0", "failed");
        let outcomes = m.outcomes();
        assert_eq!(outcomes.len(), MAX_TYPES + 2);
        assert!(outcomes.contains(&(("other".into(), "succeeded"), 10)));
        assert!(outcomes.contains(&(("t0".into(), "failed"), 1)));
        assert_eq!(m.durations().len(), MAX_TYPES + 1);
    }
}
