//! Connecting to NATS and making sure the JetStream objects the transport uses exist: the job
//! stream (work-queue retention), one durable pull consumer per job subject (explicit ack,
//! `ack_wait` = the lease, no server-side `max_deliver`), the `DLQ` stream (capped: `max_msgs`,
//! `max_age`, discard old), the `EVENTS` stream and the cancellation, status, release and
//! completion buckets. Existing objects are used as they are (never rewritten), so an
//! operator's own limits stay. It also owns how async-nats errors map onto [`SourceError`].
//! It must never fetch or settle a job.

use async_nats::jetstream::{self, consumer, kv, stream};
use tracing::{info, warn};

use super::config::{
    NatsConfig, CANCEL_BUCKET, DLQ_STREAM, DLQ_SUBJECTS, DONE_BUCKET, EVENTS_STREAM,
    EVENTS_SUBJECTS, RELEASED_BUCKET, STATUS_BUCKET,
};
use crate::dead_letters::{self, Notice};
use crate::source::SourceError;

/// Maps an async-nats error onto a [`SourceError`]: lost connections and timeouts are
/// [`SourceError::Unavailable`] (the client reconnects by itself; retrying helps), anything the
/// server answered is [`SourceError::Broker`]. async-nats has one error type per call, so this
/// reads the error's words.
pub(crate) fn map_err(what: &str, e: impl std::fmt::Display) -> SourceError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let transient = [
        "timed out",
        "timeout",
        "no responders",
        "disconnect",
        "connection",
        "broken pipe",
        "i/o",
        "io error",
        // Pull request statuses while a server restarts or a leader moves.
        "server shutdown",
        "leadership change",
    ];
    if transient.iter().any(|t| lower.contains(t)) {
        SourceError::Unavailable(format!("{what}: {text}"))
    } else {
        SourceError::Broker(format!("{what}: {text}"))
    }
}

/// Opens the connection (it reconnects by itself afterwards, forever).
pub(crate) async fn connect(cfg: &NatsConfig) -> Result<async_nats::Client, SourceError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("citadel {}", cfg.worker_id))
        .request_timeout(Some(cfg.command_timeout))
        .connection_timeout(cfg.command_timeout);
    if let Some(path) = &cfg.credentials_file {
        opts = opts.credentials_file(path).await.map_err(|e| {
            SourceError::Config(format!(
                "reading the credentials file {}: {e}",
                path.display()
            ))
        })?;
    }
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| SourceError::Config(format!("nats url: {e}")))?;
    opts.connect(addrs)
        .await
        .map_err(|e| SourceError::Unavailable(format!("connecting to nats: {e}")))
}

/// Every JetStream object of the transport.
pub(crate) struct Objects {
    pub jobs: stream::Stream,
    /// One durable pull consumer per job subject, in the order asked for.
    pub consumers: Vec<(String, consumer::PullConsumer)>,
    pub cancel: kv::Store,
    pub released: kv::Store,
    pub status: kv::Store,
    pub done: kv::Store,
}

/// Makes sure every object exists, with one consumer for each of `subjects`.
pub(crate) async fn ensure(
    js: &jetstream::Context,
    cfg: &NatsConfig,
    subjects: &[String],
) -> Result<Objects, SourceError> {
    let jobs = js
        .get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: cfg.stream_subjects.clone(),
            // A job queue: a message leaves the stream once acked or terminated, and every
            // job is delivered to one consumer of the fleet.
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| map_err(&format!("creating the stream {}", cfg.stream), e))?;
    let mut consumers = Vec::with_capacity(subjects.len());
    for subject in subjects {
        consumers.push((subject.clone(), consumer_for(&jobs, cfg, subject).await?));
    }
    for (name, subjects, max_per_subject, max_msgs, max_age) in [
        (
            DLQ_STREAM,
            DLQ_SUBJECTS,
            0,
            cfg.dlq_max_msgs,
            cfg.dlq_max_age,
        ),
        (
            EVENTS_STREAM,
            EVENTS_SUBJECTS,
            cfg.events_max_per_job,
            0,
            cfg.events_ttl,
        ),
    ] {
        js.get_or_create_stream(stream::Config {
            name: name.to_owned(),
            subjects: vec![subjects.to_owned()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_messages_per_subject: max_per_subject,
            max_messages: max_msgs,
            max_age,
            discard: stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| map_err(&format!("creating the stream {name}"), e))?;
    }
    let cancel = bucket(js, CANCEL_BUCKET, cfg).await?;
    // Written by plain publishes to its subject (see `publish`); read by the fetcher.
    let status = bucket(js, STATUS_BUCKET, cfg).await?;
    let released = bucket(js, RELEASED_BUCKET, cfg).await?;
    // Written (and awaited) before a worker journals a success; read for redeliveries.
    let done = bucket(js, DONE_BUCKET, cfg).await?;
    info!(stream = %cfg.stream, subjects = ?subjects, consumer = %cfg.consumer, "nats jetstream objects ready");
    Ok(Objects {
        jobs,
        consumers,
        cancel,
        released,
        status,
        done,
    })
}

/// The durable pull consumer of `subject` ([`NatsConfig::durable_for`]), created when missing.
/// An existing one that filters another subject is a configuration error: reading it would take
/// jobs meant for other nodes.
pub(crate) async fn consumer_for(
    jobs: &stream::Stream,
    cfg: &NatsConfig,
    subject: &str,
) -> Result<consumer::PullConsumer, SourceError> {
    let name = cfg.durable_for(subject);
    let c: consumer::PullConsumer = jobs
        .get_or_create_consumer(
            &name,
            consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: subject.to_owned(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: cfg.lease,
                // No server-side limit: the runner's maxAttempts rule decides, and it
                // dead-letters with the reason and history.
                max_deliver: -1,
                max_ack_pending: 10_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| match map_err("", &e) {
            SourceError::Broker(_) => SourceError::Config(format!(
                "creating the consumer {name} on {} for {subject} (is the subject in the \
                 stream's subjects, and is no other consumer of this work-queue stream \
                 filtering it?): {e}",
                cfg.stream
            )),
            other => other,
        })?;
    let server_wait = c.cached_info().config.ack_wait;
    if server_wait != cfg.lease {
        warn!(consumer = %name, server_ack_wait_ms = server_wait.as_millis() as u64, lease_ms = cfg.lease.as_millis() as u64,
            "the consumer exists with another ack_wait; the server's value decides when a job is redelivered");
    }
    let filter = &c.cached_info().config.filter_subject;
    if filter != subject {
        return Err(SourceError::Config(format!(
            "the consumer {name} on {} filters {filter}, not {subject}",
            cfg.stream
        )));
    }
    Ok(c)
}

/// Records the `DLQ` stream's fill after a dead letter went in (`dead_letters`): its size, its
/// `max_msgs` and what its limits dropped so far (the sequence numbers it used less the
/// messages it holds), warning when it fills up or drops.
pub(crate) async fn note_dlq_fill(js: &jetstream::Context) -> Result<(), SourceError> {
    let what = "reading the DLQ stream's state";
    let mut s = js
        .get_stream(DLQ_STREAM)
        .await
        .map_err(|e| map_err(what, e))?;
    let info = s.info().await.map_err(|e| map_err(what, e))?;
    let size = info.state.messages;
    let cap = u64::try_from(info.config.max_messages).unwrap_or(0);
    let dropped = info.state.last_sequence.saturating_sub(size);
    let queue = format!("nats:{DLQ_STREAM}");
    match dead_letters::record_total(&queue, size, cap, dropped) {
        Notice::Quiet => {}
        Notice::Filling => {
            warn!(stream = DLQ_STREAM, size, cap, "dead-letter stream is filling up: the oldest dead letters will be dropped at the cap")
        }
        Notice::Dropped(n) => {
            warn!(
                stream = DLQ_STREAM,
                dropped = n,
                size,
                cap,
                "dead-letter stream at its limits: the oldest dead letters were dropped"
            )
        }
    }
    Ok(())
}

/// Opens a key-value bucket, creating its stream when missing. The stream is created here with
/// the settings of a KV bucket (`KV_<name>`, subjects `$KV.<name>.>`, one value per key, rollups
/// allowed, direct gets) because async-nats' `create_key_value` first reads the account info,
/// whose 2.9 answer it cannot parse.
async fn bucket(
    js: &jetstream::Context,
    name: &str,
    cfg: &NatsConfig,
) -> Result<kv::Store, SourceError> {
    let what = format!("creating the bucket {name}");
    js.get_or_create_stream(stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        max_age: cfg.status_ttl,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .map_err(|e| map_err(&what, e))?;
    js.get_key_value(name).await.map_err(|e| map_err(&what, e))
}
