//! What this worker holds of one delivery, from the moment it gets it until the transport is done
//! with it ([`Hold`]): the receipt, the lease kept alive meanwhile, and the fence. The hold is the
//! one place that owns a delivery's end: the settle path marks it settled once the transport
//! applied the settlement (or answered that another worker owns the delivery); a hold dropped
//! without that, whatever the early return, hands the receipt back to its transport
//! ([`JobSource::abandon`]), so its lease runs out and it is delivered again and answered from
//! the journal. The lease keeper renews the lease every third of its length until the hold ends
//! (waiting, running and settling alike) and **fences** the delivery when the transport says the
//! lease is lost, or when no renewal succeeded for the lease less a margin: another worker may
//! own the job by then, so the handler is cancelled and nothing more is published or settled for
//! the attempt. It never decides a settlement and never touches the journal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use citadel_transports::{JobId, JobSource, Lease, Receipt};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Counters;

/// Why a delivery was fenced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fenced {
    /// The transport answered that another worker owns the delivery, or that it is gone.
    Lost,
    /// No renewal succeeded for the lease less [`fence_margin`]: the lease may be another's.
    Unconfirmed,
}

/// What the lease keeper knows, watched by [`Hold::confirm`].
#[derive(Debug, Clone, Copy, Default)]
struct Standing {
    /// A renewal succeeded since the hold began.
    confirmed: bool,
    fenced: Option<Fenced>,
}

/// One delivery held by this worker; see the module header.
#[derive(Debug)]
pub(crate) struct Hold {
    source: Arc<dyn JobSource>,
    receipt: Receipt,
    job_id: Option<JobId>,
    settled: AtomicBool,
    /// Fires when the delivery is fenced; never fires on a transport without leases.
    fence: CancellationToken,
    standing: watch::Receiver<Standing>,
    /// Stops the lease keeper when the hold ends.
    done: CancellationToken,
}

/// How long before a lease's end a worker that could not renew it stops the work: enough for a
/// handler to be cancelled (a process group killed) before another worker may take the job.
pub(crate) fn fence_margin(lease: Duration) -> Duration {
    (lease / 4).max(Duration::from_millis(100))
}

impl Hold {
    /// Holds `receipt` from now, renewing its lease while the transport has leases.
    pub(crate) fn new(
        source: Arc<dyn JobSource>,
        receipt: Receipt,
        job_id: Option<JobId>,
        counters: Arc<Counters>,
    ) -> Self {
        let fence = CancellationToken::new();
        let done = CancellationToken::new();
        let (tx, standing) = watch::channel(Standing::default());
        match source.capabilities().lease {
            Some(lease) => {
                let keeper = Keeper {
                    source: source.clone(),
                    receipt: receipt.clone(),
                    job_id: job_id.clone(),
                    lease,
                    fence: fence.clone(),
                    done: done.clone(),
                    standing: tx,
                    counters,
                };
                tokio::spawn(keeper.run());
            }
            None => {
                tx.send_replace(Standing {
                    confirmed: true,
                    fenced: None,
                });
            }
        }
        Self {
            source,
            receipt,
            job_id,
            settled: AtomicBool::new(false),
            fence,
            standing,
            done,
        }
    }

    pub(crate) fn receipt(&self) -> &Receipt {
        &self.receipt
    }

    /// The token that fires when the delivery is fenced.
    pub(crate) fn fence(&self) -> &CancellationToken {
        &self.fence
    }

    pub(crate) fn fenced(&self) -> Option<Fenced> {
        self.standing.borrow().fenced
    }

    /// Waits until a lease renewal succeeded since the hold began: true if this worker owns the
    /// delivery, false if it was fenced first. Immediate on transports without leases.
    pub(crate) async fn confirm(&self) -> bool {
        let mut standing = self.standing.clone();
        let s = standing
            .wait_for(|s| s.confirmed || s.fenced.is_some())
            .await
            .map(|s| *s)
            .unwrap_or_default();
        s.fenced.is_none() && s.confirmed
    }

    /// The transport applied the settlement, or another worker owns the delivery: nothing is
    /// owed for it any more.
    pub(crate) fn settled(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.done.cancel();
        if !self.settled.load(Ordering::Relaxed) {
            let job_id = self.job_id.as_ref().map(ToString::to_string);
            tracing::warn!(job_id = ?job_id, receipt = %self.receipt,
                "delivery not settled; handing it back to its lease for redelivery");
            self.source.abandon(&self.receipt);
        }
    }
}

/// Renews one lease until its hold ends or it is fenced.
struct Keeper {
    source: Arc<dyn JobSource>,
    receipt: Receipt,
    job_id: Option<JobId>,
    lease: Duration,
    fence: CancellationToken,
    done: CancellationToken,
    standing: watch::Sender<Standing>,
    counters: Arc<Counters>,
}

impl Keeper {
    async fn run(self) {
        let every = (self.lease / 3).max(Duration::from_millis(50));
        // The transport claimed the delivery just before; the first renewal confirms it.
        let mut held_since = Instant::now();
        let mut first = true;
        loop {
            let fence_at = held_since + self.lease.saturating_sub(fence_margin(self.lease));
            if !first {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = tokio::time::sleep_until(fence_at) => return self.fence(Fenced::Unconfirmed),
                    () = self.done.cancelled() => return,
                }
            }
            first = false;
            // The lease restarts no earlier than the request leaves.
            let asked = Instant::now();
            let answer = tokio::select! {
                r = self.source.extend_lease(&self.receipt) => r,
                () = tokio::time::sleep_until(fence_at) => return self.fence(Fenced::Unconfirmed),
                () = self.done.cancelled() => return,
            };
            match answer {
                Ok(Lease::Held) => {
                    held_since = asked;
                    self.counters
                        .jobs
                        .lease_renewals
                        .fetch_add(1, Ordering::Relaxed);
                    self.standing
                        .send_if_modified(|s| !std::mem::replace(&mut s.confirmed, true));
                }
                Ok(Lease::Lost) => return self.fence(Fenced::Lost),
                Err(e) => {
                    tracing::warn!(job_id = ?self.job_id.as_ref().map(ToString::to_string), error = %e,
                        fence_in_ms = fence_at.saturating_duration_since(Instant::now()).as_millis() as u64,
                        "could not extend the lease; trying again");
                }
            }
        }
    }

    fn fence(&self, why: Fenced) {
        self.counters
            .jobs
            .leases_lost
            .fetch_add(1, Ordering::Relaxed);
        let job_id = self.job_id.as_ref().map(ToString::to_string);
        match why {
            Fenced::Lost => {
                tracing::warn!(job_id = ?job_id, receipt = %self.receipt, "lease lost; fencing the delivery")
            }
            Fenced::Unconfirmed => {
                tracing::warn!(job_id = ?job_id, receipt = %self.receipt, lease_ms = self.lease.as_millis() as u64,
                    "no lease renewal succeeded for most of the lease; fencing the delivery")
            }
        }
        self.standing.send_modify(|s| s.fenced = Some(why));
        self.fence.cancel();
    }
}
