//! What the job benchmark measures beside the clock: when each job's handler started
//! ([`TimedHandler`], wrapping the real handler), when its settlement (journal, then transport)
//! returned ([`TimedSource`], wrapping the real source), and what the worker process spent (CPU
//! time of all its threads, peak resident set). Instruments only: it never changes what the
//! wrapped handler or source does, and it asserts nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use citadel_transports::{
    Capabilities, Health, Incoming, JobId, JobSource, Lease, Receipt, Route, SettleContext,
    Settlement, SourceError, WireEvent,
};
use serde::Serialize;
use serde_json::Value;

use crate::handlers::{Handler, HandlerError, JobContext};

/// Instants by job id.
#[derive(Debug, Default)]
pub(crate) struct Stamps(Mutex<HashMap<String, Instant>>);

impl Stamps {
    fn mark(&self, id: &str) {
        self.0
            .lock()
            .expect("poisoned")
            .entry(id.to_string())
            .or_insert_with(Instant::now);
    }

    /// How many jobs have a stamp.
    pub(crate) fn len(&self) -> usize {
        self.0.lock().expect("poisoned").len()
    }

    /// Milliseconds from each job's enqueue instant to its stamp, sorted; jobs without a stamp
    /// are left out.
    pub(crate) fn since_ms(&self, enqueued: &[(String, Instant)]) -> Vec<f64> {
        let stamps = self.0.lock().expect("poisoned");
        let mut ms: Vec<f64> = enqueued
            .iter()
            .filter_map(|(id, at)| {
                stamps
                    .get(id)
                    .map(|s| s.saturating_duration_since(*at).as_secs_f64() * 1000.0)
            })
            .collect();
        ms.sort_by(f64::total_cmp);
        ms
    }
}

/// Runs `inner` and records when each job's handler started.
#[derive(Debug)]
pub(crate) struct TimedHandler {
    inner: Arc<dyn Handler>,
    pub(crate) started: Stamps,
}

impl TimedHandler {
    pub(crate) fn new(inner: Arc<dyn Handler>) -> Self {
        Self {
            inner,
            started: Stamps::default(),
        }
    }
}

#[async_trait]
impl Handler for TimedHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        self.started.mark(ctx.job.id.as_str());
        self.inner.run(ctx).await
    }
}

/// Delegates everything to `inner` and records when each job's settlement returned: the job is
/// done (journaled and settled with the transport).
#[derive(Debug)]
pub(crate) struct TimedSource {
    inner: Arc<dyn JobSource>,
    pub(crate) settled: Arc<Stamps>,
}

impl TimedSource {
    pub(crate) fn wrap(inner: Arc<dyn JobSource>) -> (Arc<dyn JobSource>, Arc<Stamps>) {
        let settled = Arc::new(Stamps::default());
        let source = Arc::new(Self {
            inner,
            settled: settled.clone(),
        });
        (source, settled)
    }
}

#[async_trait]
impl JobSource for TimedSource {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        self.inner.next(max).await
    }
    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        self.inner.settle(receipt, settlement, ctx).await?;
        if let Some(job) = ctx.job {
            self.settled.mark(job.id.as_str());
        }
        Ok(())
    }
    async fn announce_and_settle(
        &self,
        announce: &WireEvent,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Option<Result<(), SourceError>> {
        let done = self
            .inner
            .announce_and_settle(announce, receipt, settlement, ctx)
            .await?;
        if let (Ok(()), Some(job)) = (&done, ctx.job) {
            self.settled.mark(job.id.as_str());
        }
        Some(done)
    }
    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        self.inner.extend_lease(receipt).await
    }
    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        self.inner.is_cancelled(job).await
    }
    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        self.inner.publish(event).await
    }
    async fn publish_all(&self, events: &[WireEvent]) -> Result<(), SourceError> {
        self.inner.publish_all(events).await
    }
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        self.inner.record_success(end).await
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn heartbeat(&self, status: &Value) -> Result<(), SourceError> {
        self.inner.heartbeat(status).await
    }
    fn route(&self) -> Route {
        self.inner.route()
    }
    async fn take_buffered(&self) -> Vec<Incoming> {
        self.inner.take_buffered().await
    }
    async fn close(&self) -> Vec<Incoming> {
        self.inner.close().await
    }
}

/// Percentiles of a latency, milliseconds (nearest rank).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Percentiles {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Of sorted, non-empty samples.
    pub(crate) fn of(sorted: &[f64]) -> Self {
        let pct = |p: f64| super::super::percentile(sorted, p);
        Self {
            p50_ms: pct(0.50),
            p90_ms: pct(0.90),
            p99_ms: pct(0.99),
            p999_ms: pct(0.999),
            max_ms: sorted[sorted.len() - 1],
        }
    }
}

/// CPU time of this process (all its threads, user and system) so far, in seconds, from
/// `/proc/self/stat` (clock ticks, 100 a second on Linux); 0 where that file does not exist.
pub(crate) fn cpu_seconds() -> f64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // The fields after the command name (which may hold spaces) close with ')'.
    let Some(rest) = s.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Resets the peak resident set that [`peak_rss_mb`] reads (Linux `clear_refs`); a no-op where
/// that is not possible.
pub(crate) fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The largest resident set of this process since the last reset (`VmHWM`), MiB; 0 when unknown.
pub(crate) fn peak_rss_mb() -> f64 {
    status_kb("VmHWM:").unwrap_or(0) as f64 / 1024.0
}

/// A `kB` field of `/proc/self/status`.
fn status_kb(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<f64> = (1..=1000).map(f64::from).collect();
        let p = Percentiles::of(&samples);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms),
            (501.0, 900.0, 990.0, 999.0, 1000.0)
        );
    }

    #[test]
    fn process_figures_are_read_on_linux() {
        let before = cpu_seconds();
        let spin = Instant::now();
        let mut x = 0u64;
        while cpu_seconds() <= before && spin.elapsed() < std::time::Duration::from_secs(5) {
            for i in 0..1_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
        }
        std::hint::black_box(x);
        assert!(
            cpu_seconds() > before,
            "CPU time did not advance in 5 s of spinning"
        );
        reset_peak_rss();
        assert!(peak_rss_mb() > 1.0, "no peak resident set read");
    }

    #[test]
    fn stamps_give_sorted_latencies_of_the_stamped_jobs_only() {
        let stamps = Stamps::default();
        let t0 = Instant::now();
        stamps.mark("b");
        std::thread::sleep(std::time::Duration::from_millis(5));
        stamps.mark("a");
        stamps.mark("a"); // the first stamp stays
        let ms = stamps.since_ms(&[("a".into(), t0), ("b".into(), t0), ("never".into(), t0)]);
        assert_eq!(ms.len(), 2);
        assert!(ms[0] <= ms[1] && ms[1] >= 5.0);
    }
}
