//! One delivery per job id in flight on this node ([`Gate`]): the journal keeps one state per job,
//! so two deliveries of one job (the same `jobId` enqueued twice, a redelivery while the first
//! still settles) must never interleave their events. A later delivery waits at the gate until
//! the first one's [`Pass`] is dropped (its delivery ended), and is then decided afresh from the
//! journal. It never decides anything itself and never touches the journal or a transport.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use citadel_transports::JobId;
use tokio::sync::{Mutex as Turn, OwnedMutexGuard};

/// The job ids with a delivery in flight here.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    turns: Mutex<HashMap<JobId, Arc<Turn<()>>>>,
}

/// The right to work one job id; the next delivery of it goes in when this is dropped.
#[derive(Debug)]
pub(crate) struct Pass<'a> {
    gate: &'a Gate,
    job_id: JobId,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Gate {
    fn turn(&self, id: &JobId) -> Arc<Turn<()>> {
        let mut turns = self.turns.lock().unwrap_or_else(PoisonError::into_inner);
        turns.entry(id.clone()).or_default().clone()
    }

    /// The pass for `id` at once, or `None` while another delivery of it is in flight here.
    pub(crate) fn try_enter(&self, id: &JobId) -> Option<Pass<'_>> {
        let guard = self.turn(id).try_lock_owned().ok()?;
        Some(self.pass(id, guard))
    }

    /// Waits for the delivery in flight to end, then takes the pass.
    pub(crate) async fn enter(&self, id: &JobId) -> Pass<'_> {
        let guard = self.turn(id).lock_owned().await;
        self.pass(id, guard)
    }

    fn pass(&self, id: &JobId, guard: OwnedMutexGuard<()>) -> Pass<'_> {
        Pass {
            gate: self,
            job_id: id.clone(),
            guard: Some(guard),
        }
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        let mut turns = self
            .gate
            .turns
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        drop(self.guard.take());
        // Forget the id once nobody holds or awaits its turn (the map holds the last reference).
        if turns
            .get(&self.job_id)
            .is_some_and(|t| Arc::strong_count(t) == 1)
        {
            turns.remove(&self.job_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_delivery_waits_for_the_first_and_ids_are_forgotten() {
        let gate = Gate::default();
        let id = JobId::new("j").unwrap();
        let first = gate.try_enter(&id).unwrap();
        assert!(gate.try_enter(&id).is_none());
        let other = gate.try_enter(&JobId::new("k").unwrap());
        assert!(other.is_some(), "other ids go in");
        drop(other);
        let waiting = gate.enter(&id);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(&mut waiting).is_pending());
        drop(first);
        let second = waiting.await;
        drop(second);
        assert!(gate.turns.lock().unwrap().is_empty());
    }
}
