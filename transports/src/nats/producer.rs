//! The producer's side of the NATS transport, for `citadel submit`, `citadel bench nats` and the
//! tests: enqueue a job (the wire body with `Nats-Msg-Id: jobId`), cancel one (a key in the
//! cancellation bucket), follow a job's events from the `EVENTS` stream (history first, then
//! live: a late reader misses nothing the stream still keeps), read dead letters and statuses.
//! It must never consume jobs.

use async_nats::jetstream::{self, consumer};
use futures_util::{Stream, StreamExt as _};
use serde_json::Value;

use super::config::{NatsConfig, CANCEL_BUCKET, DLQ_STREAM, EVENTS_STREAM, STATUS_BUCKET};
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
        let mut headers = async_nats::HeaderMap::new();
        if let Some(id) = body.get("jobId").and_then(Value::as_str) {
            headers.insert("Nats-Msg-Id", id);
        }
        let what = format!("publishing a job to {subject}");
        let ack = self
            .js
            .publish_with_headers(subject.to_owned(), headers, body.to_string().into())
            .await
            .map_err(|e| map_err(&what, e))?
            .await
            .map_err(|e| map_err(&what, e))?;
        Ok(ack.sequence)
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
