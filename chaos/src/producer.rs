//! The load generator: submits jobs with unique ids to the broker its URL names, at a given
//! rate, and keeps doing so across broker restarts: to the Redis job stream in the wire format
//! of docs/wire-format.md#job-entries (`redis://…`), or to the NATS job subject as JSON bodies (`nats://…`). A
//! submission is idempotent, so retrying after an unanswered one never enqueues a job twice:
//! on Redis the entry is added only with the marker `chaos:sent:{jobId}`, in one step
//! ([`RedisProducer::enqueue_once`]); on NATS the
//! producer is the job stream's only publisher and expects its last sequence
//! ([`NatsProducer::enqueue_after`]). A job may ask to be enqueued more than once with the same
//! `jobId` ([`JobSpec::copies`], Redis only: a producer whose retried `XADD` stored the job
//! twice); each copy has its own marker, so the copies are deliberate and retries still are not.
//! It records when each job was sent; it must never read what the workers did (that is
//! [`crate::history`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use citadel_transports::nats::{NatsProducer, DEFAULT_STREAM, DEFAULT_SUBJECT};
use citadel_transports::redis::RedisProducer;
use citadel_transports::JobEntry;
use citadel_transports::NatsConfig;
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

/// The default job stream of the Redis workers.
pub const STREAM: &str = "jobs:v1:gpu-general";
/// Its dead-letter stream.
pub const DLQ: &str = "dlq:v1:gpu-general";
/// How long the marker of a sent job (`chaos:sent:{jobId}`) keeps a retry from sending it again.
const SENT_MARKER_TTL: Duration = Duration::from_secs(7200);

/// A connection to the broker a producer's URL names.
#[derive(Debug)]
pub enum Connection {
    /// `redis://…`
    Redis(MultiplexedConnection),
    /// `nats://…`: the job subject of the default stream `JOBS`.
    Nats(Box<NatsProducer>),
}

/// What the checker expects of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// It completes (an `end` event).
    Complete,
    /// A poison job: dead-lettered after exactly this many executions.
    DeadLetter { executions: u32 },
}

/// One job to send.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub id: String,
    pub job_type: String,
    pub payload: Value,
    pub expect: Expect,
    /// How many entries with this `jobId` are enqueued, one right after the other (default 1).
    pub copies: u32,
}

impl JobSpec {
    pub fn new(id: impl Into<String>, job_type: &str, payload: Value) -> Self {
        Self {
            id: id.into(),
            job_type: job_type.to_owned(),
            payload,
            expect: Expect::Complete,
            copies: 1,
        }
    }

    /// `shell_command` running `command` (the worker must enable shell).
    pub fn shell(id: impl Into<String>, command: &str) -> Self {
        Self::new(id, "shell_command", json!({ "command": command }))
    }

    /// Enqueued `copies` times with the same `jobId` (Redis only).
    pub fn copies(mut self, copies: u32) -> Self {
        self.copies = copies.max(1);
        self
    }

    /// `sleep {ms}`.
    pub fn sleep(id: impl Into<String>, ms: u64) -> Self {
        Self::new(id, "sleep", json!({ "ms": ms }))
    }

    /// The chaos build kills the worker at `point` on attempts 1..=`attempts` (0: every
    /// attempt; the job is then poison).
    pub fn kill_at(mut self, point: &str, attempts: u32) -> Self {
        self.payload["chaos_kill_at"] = json!(point);
        self.payload["chaos_kill_attempts"] = json!(attempts);
        self
    }

    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }
}

/// A mixed load of `n` jobs named `{prefix}-{i}`: 70 % `noop`, 20 % short sleeps (10–100 ms),
/// 10 % long sleeps (300–1000 ms).
pub fn mixed(prefix: &str, n: usize) -> Vec<JobSpec> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i}");
            match fastrand::u8(0..10) {
                0..=6 => JobSpec::new(id, "noop", json!({})),
                7 | 8 => JobSpec::sleep(id, fastrand::u64(10..=100)),
                _ => JobSpec::sleep(id, fastrand::u64(300..=1000)),
            }
        })
        .collect()
}

/// Submits jobs; shared by the scenario and its load task.
#[derive(Debug, Clone)]
pub struct Producer {
    url: Arc<Mutex<String>>,
    sent: Arc<Mutex<Vec<(JobSpec, SystemTime)>>>,
}

impl Producer {
    pub fn new(url: &str) -> Self {
        Self {
            url: Arc::new(Mutex::new(url.to_owned())),
            sent: Arc::default(),
        }
    }

    /// The broker moved (a restarted container publishes a new port).
    pub fn set_url(&self, url: &str) {
        *self.url.lock().expect("poisoned") = url.to_owned();
    }

    pub fn url(&self) -> String {
        self.url.lock().expect("poisoned").clone()
    }

    /// A connection to the broker as it is published now; retried for up to `patience`.
    pub async fn connect(&self, patience: Duration) -> Result<Connection> {
        let until = Instant::now() + patience;
        loop {
            let url = self.url();
            let attempt = async {
                let connecting = async {
                    if url.starts_with("nats://") {
                        let cfg = NatsConfig::new(url.as_str(), "chaos-producer");
                        Ok(Connection::Nats(Box::new(
                            NatsProducer::connect(&cfg).await?,
                        )))
                    } else {
                        let client = redis::Client::open(url.as_str())?;
                        let conn = client.get_multiplexed_async_connection().await?;
                        Ok::<_, anyhow::Error>(Connection::Redis(conn))
                    }
                };
                tokio::time::timeout(Duration::from_secs(2), connecting)
                    .await
                    .context("connect timed out")?
            };
            match attempt.await {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() < until => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e.context(format!("connecting to {url}"))),
            }
        }
    }

    /// Sends `jobs` at `per_second`, retrying each until the broker takes it (up to a minute).
    /// On NATS, one `send` at a time: the producer must be the job stream's only publisher.
    pub async fn send(&self, jobs: Vec<JobSpec>, per_second: f64) -> Result<()> {
        let mut conn = self.connect(Duration::from_secs(60)).await?;
        // NATS: the job stream's last sequence as this producer knows it (read at first use).
        let mut last = None;
        let begun = Instant::now();
        for (i, job) in jobs.into_iter().enumerate() {
            let due = begun + Duration::from_secs_f64(i as f64 / per_second);
            tokio::time::sleep_until(due.into()).await;
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                let sent =
                    tokio::time::timeout(Duration::from_secs(2), submit(&conn, &job, &mut last))
                        .await;
                match sent {
                    Ok(Ok(())) => break,
                    _ if Instant::now() > until => {
                        bail!("could not submit {} for a minute", job.id)
                    }
                    Ok(Err(e)) if e.is::<Unrelated>() => return Err(e),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        conn = self.connect(Duration::from_secs(60)).await?;
                    }
                }
            }
            self.sent
                .lock()
                .expect("poisoned")
                .push((job, SystemTime::now()));
        }
        Ok(())
    }

    /// Starts [`Producer::send`] in the background.
    pub fn spawn(
        &self,
        jobs: Vec<JobSpec>,
        per_second: f64,
    ) -> tokio::task::JoinHandle<Result<()>> {
        let p = self.clone();
        tokio::spawn(async move { p.send(jobs, per_second).await })
    }

    /// Every job sent so far, with when the broker took it.
    pub fn sent(&self) -> Vec<(JobSpec, SystemTime)> {
        self.sent.lock().expect("poisoned").clone()
    }
}

/// Somebody else published to the NATS job stream: a retry can no longer tell whether its
/// earlier try was stored, and the scenario is wrong.
#[derive(Debug)]
struct Unrelated(String);

impl std::fmt::Display for Unrelated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unrelated {}

/// Submits `job` once; an error means the outcome is unknown (retry on a new connection).
/// `last` is the NATS job stream's last sequence this producer knows (`None`: read it first).
async fn submit(conn: &Connection, job: &JobSpec, last: &mut Option<u64>) -> Result<()> {
    let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    match conn {
        Connection::Redis(conn) => {
            let entry = JobEntry::new(&job.id, &job.job_type, &job.payload).enqueued_at(&now);
            for copy in 1..=job.copies {
                let marker = match copy {
                    1 => format!("chaos:sent:{}", job.id),
                    k => format!("chaos:sent:{}#{k}", job.id),
                };
                RedisProducer::new(conn.clone())
                    .enqueue_once(STREAM, &entry, &marker, SENT_MARKER_TTL)
                    .await?;
            }
        }
        Connection::Nats(_) if job.copies > 1 => {
            return Err(Unrelated(format!(
                "{}: copies of a job are for Redis only (the NATS producer expects its last \
                 sequence)",
                job.id
            ))
            .into());
        }
        Connection::Nats(nats) => {
            let known = match *last {
                Some(seq) => seq,
                // The workers create the stream: until then this fails and is retried.
                None => nats.stream_state(DEFAULT_STREAM).await?.last_sequence,
            };
            *last = Some(known);
            let body = JobEntry::new(&job.id, &job.job_type, &job.payload)
                .enqueued_at(&now)
                .to_json();
            let stored = match nats.enqueue_after(DEFAULT_SUBJECT, &body, known).await? {
                Some(seq) => seq,
                None => {
                    // Not stored now: an earlier try whose answer was lost stored it, as the
                    // next sequence, unless somebody else publishes to the stream.
                    let now = nats.stream_state(DEFAULT_STREAM).await?.last_sequence;
                    if now != known + 1 {
                        return Err(Unrelated(format!(
                            "the job stream's last sequence is {now}; {} expected: another \
                             publisher?",
                            known + 1
                        ))
                        .into());
                    }
                    now
                }
            };
            *last = Some(stored);
        }
    }
    Ok(())
}
