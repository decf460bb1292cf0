//! The NATS JetStream transport (docs/transports.md): a durable pull consumer on a work-queue stream of job
//! subjects. It owns pulling, settling and leasing messages, dead-lettering, the cancellation
//! and status buckets and job events on NATS; it must never run jobs, journal anything or choose
//! a settlement.
//!
//! How the delivery states map onto JetStream:
//! - **Jobs** are messages on `jobs.v1.<queue>` (stream `JOBS`, subjects `jobs.v1.>`, created
//!   with *work-queue* retention: a message leaves the stream once acked or terminated, so the
//!   stream holds exactly the unfinished work, and each job goes to one consumer). Producers set
//!   `Nats-Msg-Id: <jobId>` so a job published twice within the duplicate window is stored once.
//! - **Claiming** is one background fetcher (`fetch`) that sends pull requests for exactly the
//!   free slots into the inbox `next()` drains: `next()` is cancel-safe. The **attempt** is the
//!   message's delivery count less the releases recorded for it (`release`). The receipt is the message's ack subject (it names the stream
//!   sequence and survives a restart of either side).
//! - **Lease** = the consumer's `ack_wait`; `extend_lease` sends `+WPI` (in progress) and then
//!   looks the message up: gone from the stream (acked or terminated by anyone) is
//!   [`Lease::Lost`].
//! - **Ack** = `+ACK`, **retry** = `-NAK` with the delay, **dead-letter** = publish to
//!   `dlq.v1.<suffix>` (stream `DLQ`), then `+TERM`, **release** = a count in the bucket
//!   `citadel-released`, then `-NAK`. Every one is sent as a request, so it returns once the
//!   server has applied it (a double ack).
//!
//! What NATS cannot do, and how it is handled:
//! - **Release counts a delivery** on the server: a `-NAK` gives the job back at once, but the
//!   delivery count goes up. The release is therefore recorded in a bucket and subtracted from
//!   the count (a lookup only for redeliveries); if the bucket cannot be read, the server's count
//!   stands. The consumer has no `max_deliver`, so the server never drops a job on its own: the
//!   runner's `maxAttempts` rule decides.
//! - **No ownership check**: the server does not tell a worker that its delivery went to another
//!   worker (its `ack_wait` ran out). Such a late `+ACK` still acks the message, and
//!   `extend_lease` reports [`Lease::Lost`] only once the message is gone; settle never returns
//!   [`SourceError::LeaseLost`]. Extend leases well within `ack_wait` (the runner does).
//! - **Effectively once across workers**: the runner has a job's completion record written to
//!   the bucket `citadel-done` (`record_success`, awaited) before it journals the success, so a
//!   worker that dies with the success in its journal, before its `end` or ack, leaves a record.
//!   Every redelivery (delivery count above 1, whichever worker had it) is looked up in that
//!   bucket and the status bucket at once (`recheck`) before it is handed out: a recorded job is
//!   acked with its recorded `end` published again, a `completed` one acked again; neither runs.
//! - **Forgotten acks and deliveries**: nats-server 2.9 keeps an applied ack or a delivery in
//!   memory for a while; killed before it wrote it, it delivers the job again after its
//!   restart, to any worker, possibly as a first delivery. The fetcher looks up deliveries of
//!   messages stored before its latest (re)connection the same way, and also hands back one
//!   another worker claimed less than the lease plus 5 s ago for that long (that worker may
//!   still be settling it; `fetch`).
//! - **Acks waited for, of messages gone**: killed between removing an acked message from the
//!   stream and writing the consumer's state, nats-server 2.9 comes back counting the message
//!   ack-pending, undeliverable, for as long as an older message stays in the stream. An idle
//!   fetcher acks such sequences by their stream sequence (`ghosts`).
//! - Server 2.9 consumers filter one subject, so several job subjects mean one durable per
//!   subject (`{consumer}-{subject}`), pulled in turn; subjects derived from the node's
//!   capabilities (`lanes`) are pulled by priority, each by the consumer its subject names.

mod config;
mod dlq;
mod fetch;
mod ghosts;
mod lanes;
mod message;
mod producer;
mod recheck;
mod record;
mod release;
mod setup;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv, stream, AckKind};
use async_trait::async_trait;
use bytes::Bytes;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use config::{
    token, NatsConfig, CANCEL_BUCKET, DEFAULT_CONSUMER, DEFAULT_MAX_PAYLOAD, DEFAULT_STREAM,
    DEFAULT_SUBJECT, DLQ_STREAM, DONE_BUCKET, EVENTS_STREAM, STATUS_BUCKET,
};
pub use message::{ack_info, AckInfo};
pub use producer::{NatsProducer, UnsettledReport};

use crate::delivery::{Incoming, Receipt};
use crate::events::{rfc3339, JobStatus, WireEvent};
use crate::inbox::Inbox;
use crate::job::JobId;
use crate::settlement::Settlement;
use crate::source::{Capabilities, Health, JobSource, Lease, SettleContext, SourceError};
use setup::map_err;

/// State shared by the source and its fetcher.
pub(crate) struct Inner {
    cfg: NatsConfig,
    client: async_nats::Client,
    js: jetstream::Context,
    jobs: stream::Stream,
    /// Every subject read since the start.
    known: lanes::Known,
    cancel: kv::Store,
    released: kv::Store,
    status: kv::Store,
    /// Completion records (`record`).
    done: kv::Store,
    inbox: Inbox,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("cfg", &self.cfg)
            .field("inbox", &self.inbox)
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// Sends one acknowledgement to the ack subject `reply` as a request, so it returns once
    /// the server applied it. No responder means the consumer is gone: there is nothing left
    /// to settle.
    async fn ack(&self, reply: &str, kind: AckKind) -> Result<(), SourceError> {
        match self
            .client
            .request(reply.to_owned(), Bytes::from(kind))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                debug!(receipt = %reply, "the consumer is gone; nothing to settle");
                Ok(())
            }
            Err(e) => Err(map_err(&format!("acknowledging {reply}"), e)),
        }
    }

    /// Publishes a job event (`json`, its wire JSON) and the status it implies: the status is
    /// advisory, a plain publish to the bucket's subject without waiting for the store's ack
    /// (waiting cost 10-20 % of throughput in `citadel bench nats`); it goes first on this
    /// connection, so the server has it when the event's ack comes back. One JetStream publish
    /// reaches the core subscribers of the subject and the EVENTS stream; awaiting its ack
    /// keeps a job's events in order.
    async fn announce(
        &self,
        job: &JobId,
        status: Option<(JobStatus, Option<&str>)>,
        json: Bytes,
    ) -> Result<(), SourceError> {
        let ack = self.send_event(job, status, json).await?;
        ack.await
            .map_err(|e| map_err("publishing a job event", e))?;
        Ok(())
    }

    /// Sends a job's status and event without waiting for the stream's ack (returned).
    async fn send_event(
        &self,
        job: &JobId,
        status: Option<(JobStatus, Option<&str>)>,
        json: Bytes,
    ) -> Result<async_nats::jetstream::context::PublishAckFuture, SourceError> {
        if let Some((status, error)) = status {
            let mut v = serde_json::json!({
                "status": status.as_str(),
                "worker_id": self.cfg.worker_id,
                "updated_at": rfc3339(SystemTime::now()),
            });
            if let Some(error) = error {
                v["error"] = error.into();
            }
            let subject = format!("$KV.{STATUS_BUCKET}.{}", token(job));
            self.client
                .publish(subject, v.to_string().into())
                .await
                .map_err(|e| map_err("writing the job status", e))?;
        }
        self.js
            .publish(NatsConfig::events_subject(job), json)
            .await
            .map_err(|e| map_err("publishing a job event", e))
    }
}

/// A [`JobSource`] on NATS JetStream. Create it with [`NatsSource::connect`].
#[derive(Debug)]
pub struct NatsSource {
    inner: Arc<Inner>,
    fetcher: Mutex<Option<JoinHandle<()>>>,
}

impl NatsSource {
    /// Checks the configuration, connects, creates what is missing and starts fetching.
    pub async fn connect(cfg: NatsConfig) -> Result<Self, SourceError> {
        cfg.validate()?;
        let client = setup::connect(&cfg).await?;
        let js = jetstream::new(client.clone());
        let (feed, set) = lanes::first_set(&cfg);
        let subjects: Vec<String> = set.iter().map(|(s, _)| s.clone()).collect();
        if subjects.is_empty() {
            return Err(SourceError::Config("no job subject to read".into()));
        }
        let objects = setup::ensure(&js, &cfg, &subjects).await?;
        info!(stream = %cfg.stream, subjects = ?subjects, routed = cfg.routes.is_some(), consumer = %cfg.consumer, worker = %cfg.worker_id,
            lease_ms = cfg.lease.as_millis() as u64, "nats job source connected");
        let known = lanes::Known::default();
        known.add(subjects);
        let consumers = objects.consumers.into_iter().map(|(_, c)| c).collect();
        let lanes = lanes::Lanes::new(feed, &set, consumers);
        let inner = Arc::new(Inner {
            cfg,
            client,
            js,
            jobs: objects.jobs,
            known,
            cancel: objects.cancel,
            released: objects.released,
            status: objects.status,
            done: objects.done,
            inbox: Inbox::default(),
        });
        let fetcher = tokio::spawn(fetch::run(inner.clone(), lanes));
        Ok(Self {
            inner,
            fetcher: Mutex::new(Some(fetcher)),
        })
    }

    pub fn config(&self) -> &NatsConfig {
        &self.inner.cfg
    }

    fn ack_info(&self, r: &Receipt) -> Result<AckInfo, SourceError> {
        if !self.inner.known.contains(r.queue()) {
            return Err(SourceError::Config(format!(
                "receipt {r} is not from a subject of this source"
            )));
        }
        ack_info(r.id())
            .ok_or_else(|| SourceError::Config(format!("receipt {r} has no JetStream ack subject")))
    }

    async fn ack(&self, receipt: &Receipt, kind: AckKind) -> Result<(), SourceError> {
        self.inner.ack(receipt.id(), kind).await
    }

    /// The original message body, when the stream still holds it.
    async fn original(&self, seq: u64) -> Result<Option<Bytes>, SourceError> {
        match self.inner.jobs.get_raw_message(seq).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(map_err("reading the original message", e)),
        }
    }

    async fn dead_letter(
        &self,
        receipt: &Receipt,
        info: AckInfo,
        reason: &str,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        let original = self.original(info.stream_sequence).await?;
        let body = dlq::body(
            dlq::Origin {
                subject: receipt.queue(),
                stream_sequence: info.stream_sequence,
                body: original.as_deref(),
            },
            reason,
            ctx,
            &self.inner.cfg.worker_id,
            SystemTime::now(),
        );
        let mut headers = async_nats::HeaderMap::new();
        // A settlement retried after a lost answer stores one dead letter, not two.
        headers.insert(
            "Nats-Msg-Id",
            format!("{}-{}", self.inner.cfg.stream, info.stream_sequence).as_str(),
        );
        let subject = NatsConfig::dlq_subject(receipt.queue());
        let what = format!("publishing the dead letter to {subject}");
        self.inner
            .js
            .publish_with_headers(subject, headers, body.into())
            .await
            .map_err(|e| map_err(&what, e))?
            .await
            .map_err(|e| map_err(&what, e))?;
        if let Err(e) = setup::note_dlq_fill(&self.inner.js).await {
            debug!(error = %e, "the DLQ stream's fill is unknown");
        }
        self.ack(receipt, AckKind::Term).await
    }
}

impl Drop for NatsSource {
    fn drop(&mut self) {
        self.inner.inbox.close();
        if let Some(t) = self
            .fetcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

#[async_trait]
impl JobSource for NatsSource {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        // Releases are recorded and subtracted from the delivery count (`release`), but an old
        // delivery cannot be told from the new one.
        Capabilities {
            lease_loss_detected: false,
            ..Capabilities::leased(self.inner.cfg.lease)
        }
    }

    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        self.inner.inbox.next(max, self.inner.cfg.block).await
    }

    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        let info = self.ack_info(receipt)?;
        match settlement {
            Settlement::Ack => self.ack(receipt, AckKind::Ack).await?,
            Settlement::Retry { delay } => {
                let delay = (!delay.is_zero()).then_some(*delay);
                self.ack(receipt, AckKind::Nak(delay)).await?
            }
            Settlement::DeadLetter { reason } => {
                self.dead_letter(receipt, info, reason, ctx).await?
            }
            Settlement::Release => {
                // Recorded first, so the next delivery already sees it.
                release::record(
                    &self.inner.released,
                    &self.inner.cfg.stream,
                    info.stream_sequence,
                )
                .await?;
                self.ack(receipt, AckKind::Nak(None)).await?
            }
        }
        debug!(receipt = %receipt, settlement = settlement.name(), "settled");
        Ok(())
    }

    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        let info = self.ack_info(receipt)?;
        self.ack(receipt, AckKind::Progress).await?;
        if self.original(info.stream_sequence).await?.is_none() {
            warn!(receipt = %receipt, "lease lost: the message is no longer in the stream");
            return Ok(Lease::Lost);
        }
        Ok(Lease::Held)
    }

    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        match self.inner.cancel.get(token(job)).await {
            Ok(v) => Ok(v.is_some()),
            Err(e) => Err(map_err("reading the cancellation bucket", e)),
        }
    }

    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        let json = Bytes::from(event.to_json());
        self.inner
            .announce(&event.job_id, event.status(), json)
            .await
    }

    /// The events go out one after the other on the connection, then their acks are awaited:
    /// one round trip for all, in order.
    async fn publish_all(&self, events: &[WireEvent]) -> Result<(), SourceError> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let json = Bytes::from(event.to_json());
            acks.push(
                self.inner
                    .send_event(&event.job_id, event.status(), json)
                    .await?,
            );
        }
        for ack in acks {
            ack.await
                .map_err(|e| map_err("publishing a job event", e))?;
        }
        Ok(())
    }

    /// Writes the job's completion record (`record`) and returns once the bucket stored it:
    /// from then on every worker acks a redelivery of the job with this result instead of
    /// handing it out (`recheck`).
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        record::write(&self.inner.done, end, &self.inner.cfg.worker_id).await
    }

    async fn health(&self) -> Health {
        let started = std::time::Instant::now();
        // A JetStream API round trip (the job stream's info), not just a socket ping.
        let probe = self.inner.js.get_stream(self.inner.cfg.stream.clone());
        match tokio::time::timeout(self.inner.cfg.command_timeout, probe).await {
            Ok(Ok(_)) => Health::up(started.elapsed()),
            Ok(Err(e)) => Health::down(map_err("jetstream stream info", e).to_string()),
            Err(_) => Health::down("jetstream stream info timed out"),
        }
    }

    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        let node = status
            .get("nodeId")
            .and_then(|v| v.as_str())
            .unwrap_or(&self.inner.cfg.worker_id);
        self.inner
            .client
            .publish(NatsConfig::status_subject(node), status.to_string().into())
            .await
            .map_err(|e| map_err("publishing the heartbeat", e))
    }

    fn route_stats(&self) -> Option<crate::routing::RouteStats> {
        Some(crate::routing::RouteStats {
            claims: self.inner.known.claims(),
        })
    }

    async fn take_buffered(&self) -> Vec<Incoming> {
        self.inner.inbox.take_buffered()
    }

    async fn close(&self) -> Vec<Incoming> {
        let task = self
            .fetcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let patience =
            self.inner.cfg.block + self.inner.cfg.command_timeout + Duration::from_secs(1);
        let tasks = task.into_iter().collect();
        self.inner.inbox.close_after("nats", tasks, patience).await
    }
}
