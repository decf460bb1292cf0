//! Retries whose delay is longer than the lease. A retry is scheduled through the entry's idle
//! time (claimed to its owner with `IDLE lease - delay`, so the reclaimer of any worker takes it
//! when the delay is over), which cannot express a delay longer than the lease. Such entries are
//! parked here: their idle time is refreshed until the remaining delay fits in the lease, then
//! set like a short retry. This module owns that schedule (in memory: a worker that dies lets
//! its parked entries go after one lease); it must never claim an entry it does not own.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, warn};

use super::scripts::{ClaimMode, Owned};
use super::Inner;
use crate::delivery::Receipt;

/// A retry waiting longer than the lease.
#[derive(Debug, Clone)]
pub(crate) struct Parked {
    pub receipt: Receipt,
    pub due: Instant,
    pub refreshed: Instant,
}

/// The idle time that makes an entry claimable `delay` from now, when the delay fits in the
/// lease.
pub(crate) fn idle_for(lease: Duration, delay: Duration) -> Option<u64> {
    lease.checked_sub(delay).map(|idle| idle.as_millis() as u64)
}

pub(crate) async fn run(inner: Arc<Inner>) {
    let lease = inner.cfg.lease;
    let tick = (lease / 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = inner.inbox.wait_closed() => break,
        }
        let now = Instant::now();
        let due_now: Vec<Parked> = {
            let mut parked = inner.parked();
            let (act, keep): (Vec<_>, Vec<_>) = parked.drain(..).partition(|p| {
                p.due.saturating_duration_since(now) <= lease || now - p.refreshed >= lease / 3
            });
            *parked = keep;
            act
        };
        for mut p in due_now {
            let remaining = p.due.saturating_duration_since(now);
            let (idle, last) = match idle_for(lease, remaining) {
                Some(idle) => (idle, true),
                None => (0, false),
            };
            let mut conn = inner.ctl.clone();
            match inner
                .scripts
                .claim(
                    &mut conn,
                    inner.target(&p.receipt, None),
                    idle,
                    ClaimMode::Keep,
                    lease,
                )
                .await
            {
                Ok(Owned::Applied) if last => {
                    debug!(receipt = %p.receipt, "parked retry handed to the reclaimers")
                }
                Ok(Owned::Applied) => {
                    p.refreshed = now;
                    inner.parked().push(p);
                }
                Ok(Owned::Gone | Owned::Stolen) => {
                    debug!(receipt = %p.receipt, "parked retry is no longer ours")
                }
                Err(e) => {
                    warn!(receipt = %p.receipt, error = %e, "refreshing a parked retry failed");
                    inner.parked().push(p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_time_of_a_retry() {
        let lease = Duration::from_secs(60);
        assert_eq!(idle_for(lease, Duration::ZERO), Some(60_000));
        assert_eq!(idle_for(lease, Duration::from_secs(15)), Some(45_000));
        assert_eq!(idle_for(lease, lease), Some(0));
        assert_eq!(idle_for(lease, Duration::from_secs(61)), None);
    }
}
