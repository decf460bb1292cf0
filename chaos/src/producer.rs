//! The load generator: submits jobs with unique ids to the Redis job stream in the wire format of
//! SPEC §9.1, at a given rate, and keeps doing so across broker restarts. A submission is
//! idempotent (a Lua script sets `chaos:sent:{jobId}` and adds the entry in one step), so retrying
//! after an unanswered `XADD` never enqueues a job twice. It records when each job was sent; it
//! must never read what the workers did (that is [`crate::history`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use serde_json::{json, Value};

/// The default job stream of the workers.
pub const STREAM: &str = "jobs:v1:gpu-general";
/// Its dead-letter stream.
pub const DLQ: &str = "dlq:v1:gpu-general";

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
}

impl JobSpec {
    pub fn new(id: impl Into<String>, job_type: &str, payload: Value) -> Self {
        Self {
            id: id.into(),
            job_type: job_type.to_owned(),
            payload,
            expect: Expect::Complete,
        }
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

const SUBMIT: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 7200) then
  return redis.call('XADD', KEYS[2], '*', 'jobId', ARGV[1], 'type', ARGV[2], 'payload', ARGV[3], 'enqueuedAt', ARGV[4])
end
return false
";

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
    pub async fn connect(&self, patience: Duration) -> Result<MultiplexedConnection> {
        let until = Instant::now() + patience;
        loop {
            let url = self.url();
            let attempt = async {
                let client = redis::Client::open(url.as_str())?;
                tokio::time::timeout(
                    Duration::from_secs(2),
                    client.get_multiplexed_async_connection(),
                )
                .await
                .context("connect timed out")?
                .map_err(anyhow::Error::from)
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
    pub async fn send(&self, jobs: Vec<JobSpec>, per_second: f64) -> Result<()> {
        let script = redis::Script::new(SUBMIT);
        let mut conn = self.connect(Duration::from_secs(60)).await?;
        let begun = Instant::now();
        for (i, job) in jobs.into_iter().enumerate() {
            let due = begun + Duration::from_secs_f64(i as f64 / per_second);
            tokio::time::sleep_until(due.into()).await;
            let payload = job.payload.to_string();
            let until = Instant::now() + Duration::from_secs(60);
            loop {
                let now = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
                let mut call = script.key(format!("chaos:sent:{}", job.id));
                call.key(STREAM)
                    .arg(&job.id)
                    .arg(&job.job_type)
                    .arg(&payload)
                    .arg(now);
                let sent = tokio::time::timeout(
                    Duration::from_secs(2),
                    call.invoke_async::<redis::Value>(&mut conn),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => break,
                    _ if Instant::now() > until => {
                        bail!("could not submit {} for a minute", job.id)
                    }
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
