//! A delivery's place in the runner's bounds ([`Slot`]): it holds one of the `concurrency` run
//! slots from its claim until its handler returned, then trades it for one of the settlement
//! places, so the next job is claimed while this one's settlement (completion record, journal,
//! `end`, ack) goes on beside it. At most [`settle_places`] settlements are in flight: a handler
//! that returns while they are all taken keeps its run slot until one frees, so the worker never
//! holds more than `concurrency` + [`settle_places`] deliveries. It only counts; it never
//! decides, journals or talks to a transport.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The fewest settlements in flight at once, whatever the concurrency: at concurrency 1 a
/// handful of finished jobs share one journal fsync and one round trip to the transport instead
/// of waiting for each other's, while the run slots alone bound what is claimed.
const MIN_SETTLE_PLACES: usize = 32;

/// How many settlements may be in flight at `concurrency`.
pub(crate) fn settle_places(concurrency: usize) -> usize {
    concurrency.max(MIN_SETTLE_PLACES)
}

/// One delivery's run slot, then its settlement place; both end when it is dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    run: Option<OwnedSemaphorePermit>,
    settling: Arc<Semaphore>,
    settle: Option<OwnedSemaphorePermit>,
}

impl Slot {
    pub(crate) fn new(run: OwnedSemaphorePermit, settling: Arc<Semaphore>) -> Self {
        Self {
            run: Some(run),
            settling,
            settle: None,
        }
    }

    /// The handler returned: waits for a settlement place, then frees the run slot for the
    /// next claim. Idempotent.
    pub(crate) async fn handler_returned(&mut self) {
        if self.run.is_none() {
            return;
        }
        let place = self.settling.clone().acquire_owned().await;
        self.settle = Some(place.expect("the settlement semaphore is never closed"));
        self.run = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_low_concurrency_still_settles_side_by_side() {
        assert_eq!(settle_places(1), MIN_SETTLE_PLACES);
        assert_eq!(settle_places(64), 64);
    }

    #[tokio::test]
    async fn the_run_slot_frees_only_once_a_settlement_place_is_taken() {
        let runs = Arc::new(Semaphore::new(1));
        let settling = Arc::new(Semaphore::new(1));
        let mut first = Slot::new(
            runs.clone().acquire_owned().await.unwrap(),
            settling.clone(),
        );
        first.handler_returned().await;
        assert_eq!(runs.available_permits(), 1, "the run slot is free");
        let mut second = Slot::new(
            runs.clone().acquire_owned().await.unwrap(),
            settling.clone(),
        );
        {
            let waiting = second.handler_returned();
            tokio::pin!(waiting);
            assert!(futures_util::poll!(&mut waiting).is_pending());
            assert_eq!(
                runs.available_permits(),
                0,
                "held while every place is taken"
            );
            drop(first);
            waiting.await;
        }
        assert_eq!(runs.available_permits(), 1);
        drop(second);
        assert_eq!(settling.available_permits(), 1);
    }
}
