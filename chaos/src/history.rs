//! Reads back what happened to every job sent, from the broker the producer used: its events
//! (Redis: the capped per-job event stream `stream:v1:{jobId}:events` of docs/wire-format.md#job-events, since
//! Pub/Sub would lose what nobody heard; NATS: the `EVENTS` stream), its dead letters (the
//! dead-letter stream `dlq:v1:…`; the `DLQ` stream) and the jobs the broker still holds
//! unsettled (the group's pending entries; the workers' consumer's pending and ack-pending
//! messages). Both become the same [`History`], so the checker is one. The dead letters and the
//! unsettled jobs are read before the events: a worker publishes a job's events before it
//! dead-letters or acks it, so a reading never shows a job settled without what led there
//! (read the other way round, most likely, a nats-kill run missed a poison job's last `start`
//! and counted one run too few). It only reads; judging is [`crate::checker`]'s.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use citadel_transports::nats::{
    NatsProducer, UnsettledReport, DEFAULT_CONSUMER, DEFAULT_STREAM, DEFAULT_SUBJECT,
};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::producer::{Connection, JobSpec, Producer, DLQ, STREAM};

/// The consumer group of the Redis workers.
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
    /// Jobs the broker holds unsettled: entries delivered to a worker and not settled yet
    /// (Redis); messages the workers' consumer has still to deliver or to see acked (NATS).
    pub pending: u64,
    /// NATS, when the last reading found jobs unsettled: the consumer's and the stream's
    /// sequences and counts, and what the stream holds after the ack floor.
    pub unsettled: Option<UnsettledReport>,
}

/// What a broker holds about the jobs, before it is matched with what was sent.
#[derive(Debug, Default)]
struct Raw {
    /// Each job's events, in order, by job id.
    events: HashMap<String, Vec<Event>>,
    /// Every dead letter (field → value; JSON values that are not strings as JSON text).
    dead: Vec<HashMap<String, String>>,
    pending: u64,
}

impl History {
    /// Reads the history of every job `producer` sent, over `conn` (from
    /// [`Producer::connect`]).
    pub async fn read(conn: &mut Connection, producer: &Producer) -> Result<Self> {
        let sent = producer.sent();
        let mut raw = match conn {
            Connection::Redis(conn) => read_redis(conn, &sent).await?,
            Connection::Nats(nats) => read_nats(nats).await?,
        };
        let mut jobs: Vec<JobHistory> = sent
            .into_iter()
            .map(|(spec, sent)| JobHistory {
                events: raw.events.remove(&spec.id).unwrap_or_default(),
                spec,
                sent,
                dead: Vec::new(),
            })
            .collect();
        let index: HashMap<String, usize> = jobs
            .iter()
            .enumerate()
            .map(|(i, j)| (j.spec.id.clone(), i))
            .collect();
        for fields in raw.dead {
            if let Some(&i) = fields.get("jobId").and_then(|id| index.get(id)) {
                jobs[i].dead.push(fields);
            }
        }
        Ok(Self {
            jobs,
            pending: raw.pending,
            unsettled: None,
        })
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
                return Ok(h.explained(&conn).await);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl History {
    /// With, on NATS, the report of what the consumer holds unsettled (none when nothing is).
    async fn explained(mut self, conn: &Connection) -> Self {
        if let (Connection::Nats(nats), true) = (conn, self.pending > 0) {
            let report = nats.unsettled_report(DEFAULT_STREAM, DEFAULT_CONSUMER, REPORT_MOST);
            self.unsettled = report.await.ok();
        }
        self
    }
}

/// The most sequences after the ack floor a report looks up.
const REPORT_MOST: u64 = 2_000;

/// Redis: the dead-letter stream, the group's pending entries, then each sent job's event stream.
async fn read_redis(
    conn: &mut MultiplexedConnection,
    sent: &[(JobSpec, SystemTime)],
) -> Result<Raw> {
    let mut raw = Raw::default();
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(DLQ)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .context("reading the dead-letter stream")?;
    raw.dead = dead.into_iter().map(|(_, fields)| fields).collect();
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(conn)
        .await
        .context("XPENDING")?;
    raw.pending = match pending {
        redis::Value::Array(v) => match v.first() {
            Some(redis::Value::Int(n)) => *n as u64,
            _ => 0,
        },
        _ => 0,
    };
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
        for ((spec, _), entries) in chunk.iter().zip(replies) {
            let events = entries
                .into_iter()
                .filter_map(|(_, fields)| {
                    parse_event(&serde_json::from_str(fields.get("event")?).ok()?)
                })
                .collect();
            raw.events.insert(spec.id.clone(), events);
        }
    }
    Ok(raw)
}

/// NATS: the dead letters of the job subject, what the workers' consumer has not settled, then
/// the whole `EVENTS` stream (every event names its job).
async fn read_nats(nats: &NatsProducer) -> Result<Raw> {
    let mut raw = Raw::default();
    let dead = nats
        .dead_letters(DEFAULT_SUBJECT)
        .await
        .context("reading the DLQ stream")?;
    raw.dead = dead
        .into_iter()
        .filter_map(|v| match v {
            Value::Object(m) => Some(
                m.into_iter()
                    .map(|(k, v)| match v {
                        Value::String(s) => (k, s),
                        other => (k, other.to_string()),
                    })
                    .collect(),
            ),
            _ => None,
        })
        .collect();
    raw.pending = nats
        .unsettled(DEFAULT_STREAM, DEFAULT_CONSUMER)
        .await
        .context("reading the workers' consumer")?;
    for v in nats
        .all_events()
        .await
        .context("reading the EVENTS stream")?
    {
        let Some(id) = v.get("jobId").and_then(Value::as_str).map(str::to_owned) else {
            continue;
        };
        if let Some(event) = parse_event(&v) {
            raw.events.entry(id).or_default().push(event);
        }
    }
    Ok(raw)
}

fn parse_event(v: &Value) -> Option<Event> {
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
