//! Reads back what happened to every job sent: its events from the capped per-job event stream
//! `stream:v1:{jobId}:events` (SPEC §9.2; Pub/Sub would lose what nobody heard), its entries in
//! the dead-letter stream, and the group's pending entries. It only reads; judging is
//! [`crate::checker`]'s.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::producer::{JobSpec, Producer, DLQ, STREAM};

/// The consumer group of the workers.
const GROUP: &str = "workers";

/// One wire event of a job, in stream order.
#[derive(Debug, Clone)]
pub struct Event {
    /// `claimed`, `start`, `chunk`, `end`, `error`, `cancelled`.
    pub kind: String,
    /// The event's own timestamp (the worker's clock: the host's, for containers).
    pub at: SystemTime,
    /// The node that sent it.
    pub node: String,
    pub data: Value,
}

/// Everything seen of one job.
#[derive(Debug, Clone)]
pub struct JobHistory {
    pub spec: JobSpec,
    pub sent: SystemTime,
    pub events: Vec<Event>,
    /// Its entries in the dead-letter stream (field → value).
    pub dead: Vec<HashMap<String, String>>,
}

impl JobHistory {
    pub fn completed(&self) -> bool {
        self.events.iter().any(|e| e.kind == "end")
    }

    pub fn dead_lettered(&self) -> bool {
        !self.dead.is_empty()
    }

    pub fn terminal(&self) -> bool {
        self.completed() || self.dead_lettered()
    }

    /// The `start` events: one per execution of the handler.
    pub fn starts(&self) -> impl Iterator<Item = &Event> {
        self.events.iter().filter(|e| e.kind == "start")
    }
}

/// The whole history of a scenario.
#[derive(Debug, Clone)]
pub struct History {
    pub jobs: Vec<JobHistory>,
    /// Entries delivered to a worker and not settled yet.
    pub pending: u64,
}

impl History {
    /// Reads the history of every job `producer` sent.
    pub async fn read(conn: &mut MultiplexedConnection, producer: &Producer) -> Result<Self> {
        let sent = producer.sent();
        let mut jobs = Vec::with_capacity(sent.len());
        for chunk in sent.chunks(500) {
            let mut pipe = redis::pipe();
            for (spec, _) in chunk {
                pipe.cmd("XRANGE")
                    .arg(format!("stream:v1:{}:events", spec.id))
                    .arg("-")
                    .arg("+");
            }
            let replies: Vec<Vec<(String, HashMap<String, String>)>> =
                pipe.query_async(conn).await.context("reading job events")?;
            for ((spec, at), entries) in chunk.iter().zip(replies) {
                let events = entries
                    .into_iter()
                    .filter_map(|(_, fields)| parse_event(fields.get("event")?))
                    .collect();
                jobs.push(JobHistory {
                    spec: spec.clone(),
                    sent: *at,
                    events,
                    dead: Vec::new(),
                });
            }
        }
        let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(DLQ)
            .arg("-")
            .arg("+")
            .query_async(conn)
            .await
            .context("reading the dead-letter stream")?;
        let index: HashMap<String, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.spec.id.clone(), i))
            .collect();
        for (_, fields) in dead {
            if let Some(&i) = fields.get("jobId").and_then(|id| index.get(id)) {
                jobs[i].dead.push(fields);
            }
        }
        let pending: redis::Value = redis::cmd("XPENDING")
            .arg(STREAM)
            .arg(GROUP)
            .query_async(conn)
            .await
            .context("XPENDING")?;
        let pending = match pending {
            redis::Value::Array(v) => match v.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        };
        Ok(Self { jobs, pending })
    }

    /// Polls until every job sent is terminal and nothing is pending, or `timeout` passes;
    /// returns the last reading (the checker reports what is missing).
    pub async fn settle(producer: &Producer, timeout: Duration) -> Result<Self> {
        let until = Instant::now() + timeout;
        let mut conn = producer.connect(Duration::from_secs(30)).await?;
        loop {
            let h = match Self::read(&mut conn, producer).await {
                Ok(h) => h,
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    conn = producer.connect(Duration::from_secs(30)).await?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if (h.pending == 0 && h.jobs.iter().all(JobHistory::terminal)) || Instant::now() > until
            {
                return Ok(h);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn parse_event(json: &str) -> Option<Event> {
    let v: Value = serde_json::from_str(json).ok()?;
    let at = humantime::parse_rfc3339(v.get("timestamp")?.as_str()?).ok()?;
    let node = v["data"]["meta"]["node_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    Some(Event {
        kind: v.get("type")?.as_str()?.to_owned(),
        at,
        node,
        data: v.get("data").cloned().unwrap_or(Value::Null),
    })
}
