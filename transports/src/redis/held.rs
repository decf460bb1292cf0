//! The entries this process claimed and has not settled yet ([`Outstanding`]): when it last
//! claimed, renewed or tried to settle each (the reclaimer skips those touched within a lease),
//! their job (for its owner marker), when their claim was asked (a claim that recent stands
//! for the first lease renewal) and the gate's answer on their cancellation (the check before
//! the start reads it instead of asking Redis). This module only remembers; it must never talk
//! to Redis or decide a settlement.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::delivery::Receipt;
use crate::job::JobId;
use crate::source::claim_confirms;

/// An entry this process claimed: when it last touched it, and its job (none if malformed).
#[derive(Debug)]
struct Held {
    at: Instant,
    job: Option<JobId>,
    /// When its claim was asked, until the first renewal reads it.
    claimed: Option<Instant>,
    /// The gate's answer on its cancellation and when it came, until it is read.
    cancelled: Option<(Instant, bool)>,
}

/// What the fetcher knows of an entry it hands out: its job and whether the gate found its
/// cancellation requested (none if malformed), and when its claim was asked (none for a
/// re-read of this consumer's own pending entry, which leaves its lease as it was).
#[derive(Debug)]
pub(crate) struct Claim {
    pub job: Option<(JobId, bool)>,
    pub at: Option<Instant>,
}

/// The entries claimed here and not settled, with what is known of each.
#[derive(Debug, Default)]
pub(crate) struct Outstanding(Mutex<HashMap<Receipt, Held>>);

impl Outstanding {
    fn lock(&self) -> MutexGuard<'_, HashMap<Receipt, Held>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn track(&self, r: Receipt, claim: Claim) {
        let now = Instant::now();
        let (job, cancelled) = claim.job.unzip();
        let held = Held {
            at: now,
            job,
            claimed: claim.at,
            cancelled: cancelled.map(|c| (now, c)),
        };
        self.lock().insert(r, held);
    }

    /// The job `r` was claimed for here.
    pub(crate) fn job(&self, r: &Receipt) -> Option<JobId> {
        self.lock().get(r).and_then(|h| h.job.clone())
    }

    /// Whether `r` was claimed recently enough (under `lease`) for its claim to stand for its
    /// first renewal ([`claim_confirms`]); read once.
    pub(crate) fn claim_confirms(&self, r: &Receipt, lease: Duration) -> bool {
        self.lock()
            .get_mut(r)
            .and_then(|h| h.claimed.take())
            .is_some_and(|at| at.elapsed() < claim_confirms(lease))
    }

    /// The gate's answer on `job`'s cancellation, if it came within [`claim_confirms`] of
    /// `lease`; read once.
    pub(crate) fn fresh_cancellation(&self, job: &JobId, lease: Duration) -> Option<bool> {
        let mut all = self.lock();
        let held = all
            .values_mut()
            .find(|h| h.cancelled.is_some() && h.job.as_ref() == Some(job))?;
        let (at, cancelled) = held.cancelled.take()?;
        (at.elapsed() < claim_confirms(lease)).then_some(cancelled)
    }

    /// Notes that the runner still works on `r` (a renewal or a settlement is being tried).
    pub(crate) fn touch(&self, r: &Receipt) {
        if let Some(h) = self.lock().get_mut(r) {
            h.at = Instant::now();
        }
    }

    pub(crate) fn forget(&self, r: &Receipt) {
        self.lock().remove(r);
    }

    /// Whether `r` was touched here within `lease`. A receipt nobody renews or settles any
    /// more (the runner gave up on a settlement that kept failing) is not held forever.
    pub(crate) fn touched_within(&self, r: &Receipt, lease: Duration) -> bool {
        self.lock().get(r).is_some_and(|h| h.at.elapsed() < lease)
    }
}
