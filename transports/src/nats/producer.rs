//! The producer's side of the NATS transport, for `citadel submit`, `citadel bench nats`, the
//! chaos suite and the tests: enqueue a job (the wire body with `Nats-Msg-Id: jobId`; a lone
//! publisher can also expect the stream's last sequence, idempotent across a server restart),
//! cancel one (a key in the cancellation bucket), follow a job's events from the `EVENTS` stream
//! (history first, then live: a late reader misses nothing the stream still keeps), read every
//! event, dead letters, statuses and a stream's state. It must never consume jobs.

use async_nats::jetstream::{self, consumer, stream};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;

use super::config::{
    NatsConfig, CANCEL_BUCKET, DLQ_STREAM, EVENTS_STREAM, EVENTS_SUBJECTS, STATUS_BUCKET,
};
use super::setup::{self, map_err};
use crate::job::JobId;
use crate::source::SourceError;

/// A connection for producing jobs and watching them.
#[derive(Debug, Clone)]
pub struct NatsProducer {
    client: async_nats::Client,
    js: jetstream::Context,
}

impl NatsProducer {
    /// Connects (with the URL and credentials of `cfg`; nothing is created).
    pub async fn connect(cfg: &NatsConfig) -> Result<Self, SourceError> {
        let client = setup::connect(cfg).await?;
        let js = jetstream::new(client.clone());
        Ok(Self { client, js })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// Publishes `body` (a job message: `{"jobId","type","payload",…}`) to `subject` and waits for
    /// the stream to store it; returns its stream sequence. The `jobId` becomes the
    /// `Nats-Msg-Id`, so the same job published twice within the duplicate window is one message.
    pub async fn enqueue(&self, subject: &str, body: &Value) -> Result<u64, SourceError> {
        let what = format!("publishing a job to {subject}");
        self.publish_job(subject, body, None)
            .await
            .map_err(|e| map_err(&what, e))
    }

    /// [`NatsProducer::enqueue`] for the only publisher of the job stream, idempotent also
    /// across a server restart: the message is stored only if the stream's last sequence is
    /// still `last` (`Nats-Expected-Last-Sequence`). Returns its stream sequence, or `None`
    /// when the stream's last sequence is not `last` (nothing was stored by this call: for a
    /// lone publisher, an earlier try whose answer was lost stored it at `last + 1`).
    ///
    /// `Nats-Msg-Id` alone is not enough there: a restarted server rebuilds its duplicate
    /// window only from the messages the stream still holds, so a job stored, acked by a worker
    /// (a work-queue stream then drops it) and published again after a lost answer would be
    /// stored twice. `last` 0 (an empty stream) cannot be expected: the server ignores it.
    pub async fn enqueue_after(
        &self,
        subject: &str,
        body: &Value,
        last: u64,
    ) -> Result<Option<u64>, SourceError> {
        let what = format!("publishing a job to {subject}");
        match self.publish_job(subject, body, Some(last)).await {
            Ok(seq) => Ok(Some(seq)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Err(e) => Err(map_err(&what, e)),
        }
    }

    async fn publish_job(
        &self,
        subject: &str,
        body: &Value,
        last: Option<u64>,
    ) -> Result<u64, jetstream::context::PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = body.get("jobId").and_then(Value::as_str) {
            headers.insert("Nats-Msg-Id", id);
        }
        if let Some(last) = last {
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
        }
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body.to_string().into())
            .await?
            .await?;
        Ok(ack.sequence)
    }

    /// The state of `stream` now: how many messages it holds (for the work-queue job stream,
    /// the unfinished jobs) and its last sequence.
    pub async fn stream_state(&self, stream: &str) -> Result<stream::State, SourceError> {
        let what = format!("reading the state of the stream {stream}");
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| map_err(&what, e))?;
        Ok(s.cached_info().state.clone())
    }

    /// Asks the workers to cancel `job` (queued or running).
    pub async fn cancel(&self, job: &JobId) -> Result<(), SourceError> {
        let bucket = self
            .js
            .get_key_value(CANCEL_BUCKET)
            .await
            .map_err(|e| map_err("opening the cancellation bucket", e))?;
        bucket
            .put(super::token(job), "1".into())
            .await
            .map_err(|e| map_err("writing the cancellation", e))?;
        Ok(())
    }

    /// The job's status record (`{"status","worker_id","updated_at","error"?}`), if any.
    pub async fn status(&self, job: &JobId) -> Result<Option<Value>, SourceError> {
        let bucket = self
            .js
            .get_key_value(STATUS_BUCKET)
            .await
            .map_err(|e| map_err("opening the status bucket", e))?;
        let v = bucket
            .get(super::token(job))
            .await
            .map_err(|e| map_err("reading the status", e))?;
        Ok(v.and_then(|b| serde_json::from_slice(&b).ok()))
    }

    /// The job's events as `(events stream sequence, event)`: those the stream keeps, then new
    /// ones as they come. Ends only when the caller drops it.
    pub async fn follow(
        &self,
        job: &JobId,
    ) -> Result<impl Stream<Item = Result<(u64, Value), SourceError>> + Unpin, SourceError> {
        let stream = self
            .js
            .get_stream(EVENTS_STREAM)
            .await
            .map_err(|e| map_err("opening the events stream", e))?;
        let messages = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: NatsConfig::events_subject(job),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| map_err("following the job's events", e))?
            .messages()
            .await
            .map_err(|e| map_err("following the job's events", e))?;
        Ok(messages.map(|m| {
            let m = m.map_err(|e| map_err("reading a job event", e))?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or_default();
            let v = serde_json::from_slice(&m.payload)
                .map_err(|e| SourceError::Broker(format!("a job event is not JSON: {e}")))?;
            Ok((seq, v))
        }))
    }

    /// The events the stream holds for `job` now, in order.
    pub async fn events(&self, job: &JobId) -> Result<Vec<Value>, SourceError> {
        self.all(EVENTS_STREAM, &NatsConfig::events_subject(job))
            .await
    }

    /// The jobs durable consumer `consumer` of `stream` has still to deliver or to see
    /// settled (its pending plus its ack-pending messages). On a work-queue stream this can be
    /// fewer than the messages the stream holds: a restarted nats-server 2.9 may keep acked
    /// messages it had not deleted on disk, which the consumer never delivers again.
    pub async fn unsettled(&self, stream: &str, consumer: &str) -> Result<u64, SourceError> {
        let what = format!("reading the consumer {consumer} of {stream}");
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| map_err(&what, e))?;
        let c: consumer::PullConsumer = s
            .get_consumer(consumer)
            .await
            .map_err(|e| map_err(&what, e))?;
        let info = c.cached_info();
        Ok(info.num_pending + info.num_ack_pending as u64)
    }

    /// Why durable consumer `consumer` of `stream` holds jobs unsettled, for a report: its
    /// sequences and counts, the stream's, and each sequence after its ack floor up to its last
    /// delivery (at most `most`), with the job of the message when the stream still holds it.
    pub async fn unsettled_report(
        &self,
        stream: &str,
        consumer: &str,
        most: u64,
    ) -> Result<UnsettledReport, SourceError> {
        let what = format!("reading the consumer {consumer} of {stream}");
        let mut s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| map_err(&what, e))?;
        let mut c: consumer::PullConsumer = s
            .get_consumer(consumer)
            .await
            .map_err(|e| map_err(&what, e))?;
        let info = c.info().await.map_err(|e| map_err(&what, e))?.clone();
        let state = s.info().await.map_err(|e| map_err(&what, e))?.state.clone();
        let floor = info.ack_floor.stream_sequence;
        let top = info
            .delivered
            .stream_sequence
            .min(floor.saturating_add(most));
        let mut after_floor = Vec::new();
        for seq in floor + 1..=top {
            let job = match s.get_raw_message(seq).await {
                Ok(m) => Some(
                    serde_json::from_slice::<Value>(&m.payload)
                        .ok()
                        .and_then(|v| v["jobId"].as_str().map(str::to_owned))
                        .unwrap_or_default(),
                ),
                Err(e) if e.kind() == stream::RawMessageErrorKind::NoMessageFound => None,
                Err(e) => return Err(map_err(&what, e)),
            };
            after_floor.push((seq, job));
        }
        Ok(UnsettledReport {
            delivered: info.delivered.stream_sequence,
            ack_floor: floor,
            num_pending: info.num_pending,
            num_ack_pending: info.num_ack_pending as u64,
            num_redelivered: info.num_redelivered as u64,
            first: state.first_sequence,
            last: state.last_sequence,
            messages: state.messages,
            after_floor,
        })
    }

    /// Every event the events stream holds, of every job, in stream order (each names its
    /// `jobId`).
    pub async fn all_events(&self) -> Result<Vec<Value>, SourceError> {
        self.all(EVENTS_STREAM, EVENTS_SUBJECTS).await
    }

    /// The dead letters of a job subject, oldest first.
    pub async fn dead_letters(&self, job_subject: &str) -> Result<Vec<Value>, SourceError> {
        self.all(DLQ_STREAM, &NatsConfig::dlq_subject(job_subject))
            .await
    }

    /// Every message a stream holds on `subject`, as JSON.
    async fn all(&self, stream: &str, subject: &str) -> Result<Vec<Value>, SourceError> {
        let s = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| map_err("opening a stream", e))?;
        let c: consumer::PullConsumer = s
            .create_consumer(consumer::pull::Config {
                filter_subject: subject.to_owned(),
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: std::time::Duration::from_secs(30),
                ..Default::default()
            })
            .await
            .map_err(|e| map_err("reading a stream", e))?;
        let mut out = Vec::new();
        loop {
            let mut batch = c
                .fetch()
                .max_messages(1000)
                .messages()
                .await
                .map_err(|e| map_err("reading a stream", e))?;
            let before = out.len();
            while let Some(m) = batch.next().await {
                let m = m.map_err(|e| map_err("reading a stream", e))?;
                out.push(serde_json::from_slice(&m.payload).unwrap_or(Value::Null));
            }
            if out.len() == before {
                return Ok(out);
            }
        }
    }
}

/// A consumer's unsettled jobs as [`NatsProducer::unsettled_report`] reads them.
#[derive(Debug, Clone, Default)]
pub struct UnsettledReport {
    /// The stream sequence of the consumer's last delivery.
    pub delivered: u64,
    /// The stream sequence below which every delivery is acked.
    pub ack_floor: u64,
    pub num_pending: u64,
    pub num_ack_pending: u64,
    pub num_redelivered: u64,
    /// The stream's first and last sequence and how many messages it holds.
    pub first: u64,
    pub last: u64,
    pub messages: u64,
    /// Each sequence after the ack floor up to the last delivery: the job of the message the
    /// stream still holds there (empty when its body names none), `None` when it is gone.
    pub after_floor: Vec<(u64, Option<String>)>,
}

impl std::fmt::Display for UnsettledReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "consumer: delivered up to seq {}, ack floor seq {}, {} pending, {} ack-pending, {} redelivered; stream: seqs {}..={}, {} messages",
            self.delivered, self.ack_floor, self.num_pending, self.num_ack_pending,
            self.num_redelivered, self.first, self.last, self.messages
        )
    }
}
