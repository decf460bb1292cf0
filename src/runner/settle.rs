//! The one settle path (docs/journal.md#invariants): the settlement's event is appended to the
//! journal and made durable, then the event that announces it (`end`, `error`, `cancelled`) is
//! published, and only then is the settlement sent to the transport (a transport that can sends
//! the announcement and the settlement in one round trip, in that order:
//! `JobSource::announce_and_settle`; if that try fails, they go one at a time). Transient transport errors
//! are retried with the shared backoff for a bounded time. Whenever a step cannot be done (the
//! journal refuses the append, the announcement or the settlement keeps failing, the delivery was
//! fenced) the delivery's [`Hold`] is left unsettled and hands the receipt back to its lease: the
//! journal already says what was decided, and the redelivery is settled from it (a succeeded job
//! is acked again without running, a dead letter is moved again). A success is recorded on the
//! transport (its completion record, for the other workers) before it is journaled at all
//! ([`Shared::record_success`]).

use std::time::Duration;

use citadel_journal::{EventKind, NewEvent};
use citadel_transports::{
    Backoff, EventData, Job, Receipt, SettleContext, Settlement, SourceError, WireEvent,
};

use super::hold::Hold;
use super::Shared;

/// How long a settlement keeps being retried against a transport that is away.
const SETTLE_PATIENCE: Duration = Duration::from_secs(30);

/// The delivery a settlement is for: the job, the hold on its receipt and its delivery id.
#[derive(Debug)]
pub(crate) struct SettleTarget<'a> {
    pub job: &'a Job,
    pub hold: &'a Hold,
    pub delivery_id: &'a str,
}

impl Shared {
    /// Journals `event` durably, then applies `settlement` on the transport.
    pub(crate) async fn settle(
        &self,
        s: &SettleTarget<'_>,
        event: EventKind,
        settlement: Settlement,
    ) {
        self.settle_announcing(s, event, settlement, None).await;
    }

    /// [`Shared::settle`], publishing `announce` (a job's `end`, `error` or `cancelled`) between
    /// the durable journal append and the transport: whoever sees it knows the outcome is
    /// journaled, and a crash before the settlement leaves the redelivery to answer from it.
    pub(crate) async fn settle_announcing(
        &self,
        s: &SettleTarget<'_>,
        event: EventKind,
        settlement: Settlement,
        announce: Option<EventData>,
    ) {
        self.record_outcome(&s.job.job_type, &event);
        let begun = std::time::Instant::now();
        let appended = self
            .journal
            .append(
                NewEvent::new(s.job.id.clone(), self.source.name(), event).delivery(s.delivery_id),
            )
            .await;
        self.counters.jobs.journal_append.observe(begun.elapsed());
        if let Err(e) = appended {
            // Without the journal entry the settlement is not justified: leave the delivery
            // pending; its lease runs out and it is delivered again.
            tracing::error!(job_id = %s.job.id, error = %e, "journal append failed; the delivery is left for redelivery");
            return;
        }
        let announce = announce.map(|data| WireEvent::for_job(s.job, self.meta.clone(), data));
        if let Some(event) = &announce {
            // (A chaos build that is to die between the two takes them one at a time.)
            let in_one = !crate::chaos::wants(crate::chaos::Point::BeforeAck, s.job);
            if in_one
                && s.hold.fenced().is_none()
                && self.announce_and_settle(s, event, &settlement).await
            {
                return;
            }
            if !self.publish_patiently(s.job, event).await {
                // The journal holds the outcome: the redelivery re-publishes it and settles.
                tracing::error!(job_id = %s.job.id, "the outcome could not be published; the delivery is left for redelivery");
                return;
            }
        }
        if s.hold.fenced().is_some() {
            // The outcome is journaled (and announced: a journaled success is true whoever owns
            // the lease now); the settlement is not this worker's to send any more.
            tracing::warn!(job_id = %s.job.id, "fenced: settling nothing; the journal holds the outcome");
            return;
        }
        crate::chaos::point(crate::chaos::Point::BeforeAck, s.job);
        let ctx = self.settle_context(s.job);
        if self
            .send_settlement(s.hold.receipt(), &settlement, &ctx, Some(&s.job.id))
            .await
        {
            s.hold.settled();
        }
    }

    /// What the transport is told along with a settlement of `job`.
    fn settle_context<'a>(&self, job: &'a Job) -> SettleContext<'a> {
        let state = self.journal.state(&job.id);
        SettleContext {
            job: Some(job),
            attempts: state
                .as_ref()
                .map_or(job.attempt, |st| st.attempts.max(job.attempt)),
            errors: state.map(|st| st.errors).unwrap_or_default(),
            worker_id: self.config.worker_id.clone(),
        }
    }

    /// Publishes `announce` and applies `settlement` in one round trip where the transport can
    /// (once; no retry): true when the delivery is done with (settled, or another worker owns
    /// it). False when the transport cannot, or the try failed: the caller publishes, then
    /// settles, each retried (a failed try may have published already: the announcement may
    /// then go out twice, as after a lost reply).
    async fn announce_and_settle(
        &self,
        s: &SettleTarget<'_>,
        announce: &WireEvent,
        settlement: &Settlement,
    ) -> bool {
        let ctx = self.settle_context(s.job);
        let receipt = s.hold.receipt();
        let done = self
            .source
            .announce_and_settle(announce, receipt, settlement, &ctx)
            .await;
        match done {
            None => false,
            Some(Ok(())) => {
                tracing::debug!(job_id = %s.job.id, receipt = %receipt, settlement = settlement.name(), "announced and settled");
                s.hold.settled();
                true
            }
            Some(Err(SourceError::LeaseLost(_))) => {
                tracing::warn!(job_id = %s.job.id, receipt = %receipt, settlement = settlement.name(),
                    "announced, not settled: another worker owns the delivery now");
                s.hold.settled();
                true
            }
            Some(Err(e)) => {
                tracing::warn!(job_id = %s.job.id, receipt = %receipt, error = %e,
                    "could not announce and settle in one go; doing it one step at a time");
                false
            }
        }
    }

    /// Counts a terminal event (or a skip) under the job's type, for `/metrics`.
    pub(crate) fn record_outcome(&self, job_type: &str, event: &EventKind) {
        if event.is_terminal() || matches!(event, EventKind::Skipped { .. }) {
            self.counters.jobs.outcome(job_type, event.name());
        }
    }

    /// Makes the job's success known to the transport's other workers (its completion record)
    /// before the success is journaled: a worker killed once its journal holds the success,
    /// before its `end` went out, otherwise left another worker to take the entry over after
    /// the lease and run the job again (found by the chaos suite: the buffered `succeeded` is
    /// made durable by any other job's flush). Retried like the `end`; if the transport stays
    /// away, the success is journaled all the same (this node's journal still answers a
    /// redelivery it receives).
    pub(crate) async fn record_success(&self, job: &Job, result: &serde_json::Value) {
        let end = EventData::End {
            result: result.clone(),
        };
        let end = WireEvent::for_job(job, self.meta.clone(), end);
        if !self
            .patiently(job, "completion record", || {
                self.source.record_success(&end)
            })
            .await
        {
            tracing::error!(job_id = %job.id, "the success could not be recorded on the transport before the journal; another worker may run the job again if this one dies before its `end` is published");
        }
    }

    /// Publishes an event that a settlement depends on (a job's `end`: acking a job whose
    /// result nobody received would lose the result), retrying transient failures for as long
    /// as a settlement is retried. The chaos suite's broker kills found results dropped here.
    async fn publish_patiently(&self, job: &Job, event: &WireEvent) -> bool {
        self.patiently(job, event.event_type(), || self.source.publish(event))
            .await
    }

    /// Calls `send` (a publication of `what` for `job`) until it succeeds, retrying transient
    /// failures for [`SETTLE_PATIENCE`]; false when it gave up.
    async fn patiently<F, Fut>(&self, job: &Job, what: &str, mut send: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), SourceError>>,
    {
        let started = std::time::Instant::now();
        let mut retrier = Backoff::RECONNECT.retrier();
        loop {
            match send().await {
                Ok(()) => return true,
                Err(e) if e.is_retryable() && started.elapsed() < SETTLE_PATIENCE => {
                    let delay = retrier.next_delay();
                    tracing::warn!(job_id = %job.id, event = what, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "could not publish the result; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(job_id = %job.id, event = what, error = %e, "could not publish the result");
                    return false;
                }
            }
        }
    }

    /// Sends a settlement to the transport, retrying transient failures for a bounded time.
    /// True when the transport is done with the delivery (the settlement applied, or another
    /// worker owns it); false leaves it to the caller's [`Hold`] to hand back. Used directly only
    /// for deliveries the journal never saw (malformed entries, work handed back unstarted).
    pub(crate) async fn send_settlement(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
        job_id: Option<&citadel_transports::JobId>,
    ) -> bool {
        let job = job_id.map(ToString::to_string).unwrap_or_default();
        let started = std::time::Instant::now();
        let mut retrier = Backoff::RECONNECT.retrier();
        loop {
            match self.source.settle(receipt, settlement, ctx).await {
                Ok(()) => {
                    tracing::debug!(job_id = %job, receipt = %receipt, settlement = settlement.name(), "settled");
                    return true;
                }
                Err(SourceError::LeaseLost(_)) => {
                    tracing::warn!(job_id = %job, receipt = %receipt, settlement = settlement.name(),
                        "not settled: another worker owns the delivery now");
                    return true;
                }
                Err(e) if e.is_retryable() && started.elapsed() < SETTLE_PATIENCE => {
                    let delay = retrier.next_delay();
                    tracing::warn!(job_id = %job, receipt = %receipt, error = %e, retry_in_ms = delay.as_millis() as u64,
                        "settlement failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::error!(job_id = %job, receipt = %receipt, settlement = settlement.name(), error = %e,
                        "settlement failed; the journal holds the decision and a redelivery is settled from it");
                    return false;
                }
            }
        }
    }
}
