//! `citadel submit TYPE [KEY=VALUE | KEY:=JSON …] [--payload JSON] [--wait]`: enqueues one job on
//! a control plane (`--nexus`, `CITADEL_NEXUS_URL`, else the local one), on Redis
//! (`--redis-url`/`CITADEL_REDIS_URL`, in the wire format of docs/wire-format.md#job-entries) or on NATS JetStream
//! (`--nats-url`/`CITADEL_NATS_URL`, the same fields as a JSON message on `--subject`). With `--wait` it streams
//! the job's events as they come (chunks to stdout at once), prints the result and exits non-zero
//! when the job fails, is cancelled or dead-lettered, or the timeout passes. It never runs a job.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Map, Value};

use citadel_transports::nats::NatsProducer;
use citadel_transports::redis::RedisProducer;
use citadel_transports::routing::{self, Target};
use citadel_transports::{JobEntry, NatsConfig, RedisConfig, TransportConfig, TransportProducer};

use super::remote::encode;
use crate::format;

#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job type (`echo`, `noop`, `sleep`, `shell_command`, `llm_inference`, …).
    job_type: String,
    /// Payload fields: `key=value` (a string) or `key:=json` (any JSON value).
    fields: Vec<String>,
    /// The whole payload as a JSON object (fields given as KEY=VALUE are added to it).
    #[arg(long, value_name = "JSON")]
    payload: Option<String>,
    /// The job id (default: a fresh UUID-like id).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// Attempts before the job goes to the dead-letter list.
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Stream the job's events and print its result; exit non-zero unless it succeeds.
    #[arg(long, short = 'w')]
    wait: bool,
    /// Give up waiting after this long (with --wait).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    timeout: String,
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
    /// Submit to Redis instead (docs/wire-format.md#job-entries entry on --stream).
    #[arg(long, env = "CITADEL_REDIS_URL", value_name = "URL")]
    redis_url: Option<String>,
    /// The Redis job stream (default jobs:v1:gpu-general, or the one --tag, --node or --org
    /// names).
    #[arg(long, value_name = "STREAM", conflicts_with_all = ["tag", "node", "org"])]
    stream: Option<String>,
    /// Submit to NATS JetStream instead (a job message on --subject; a worker must have
    /// created the stream).
    #[arg(long, env = "CITADEL_NATS_URL", value_name = "URL")]
    nats_url: Option<String>,
    /// The NATS job subject (default jobs.v1.gpu-general, or the one --tag, --node or --org
    /// names).
    #[arg(long, value_name = "SUBJECT", conflicts_with_all = ["tag", "node", "org"])]
    subject: Option<String>,
    /// Only a node with this capability tag may run the job (`gpu:nvidia-h100-80gb-hbm3`,
    /// `model:llama-3.1-8b`, a manifest tag): Redis stream jobs:v1:tag:TAG, NATS subject
    /// jobs.v1.tag.… (docs/transports.md#routing).
    #[arg(long, value_name = "TAG", conflicts_with = "node")]
    tag: Option<String>,
    /// Only this node (by name) may run the job: its own stream, read before any other.
    #[arg(long, value_name = "NODE")]
    node: Option<String>,
    /// The organization: alone, its stream; with --node, the node's stream within it.
    #[arg(long, value_name = "ORG", conflicts_with = "tag")]
    org: Option<String>,
}

/// Where --tag, --node and --org send the job (`None`: the general stream).
fn target(args: &SubmitArgs) -> anyhow::Result<Option<Target>> {
    Ok(match (&args.tag, &args.node, &args.org) {
        (Some(t), _, _) => {
            if !routing::valid_tag(t) {
                bail!(
                    "--tag {t:?}: a tag is lower case letters, digits and `:._-`, starting with a \
                     letter or digit, at most {} characters",
                    routing::MAX_TAG_LEN
                );
            }
            Some(Target::Tag(t.clone()))
        }
        (None, Some(n), org) => Some(Target::Node {
            org: org.clone(),
            node: n.clone(),
        }),
        (None, None, Some(o)) => Some(Target::Org(o.clone())),
        (None, None, None) => None,
    })
}

/// The Redis stream of the job.
fn stream(args: &SubmitArgs) -> anyhow::Result<String> {
    Ok(match (&args.stream, target(args)?) {
        (Some(s), _) => s.clone(),
        (None, Some(t)) => t.redis_stream(),
        (None, None) => citadel_transports::redis::DEFAULT_STREAM.to_owned(),
    })
}

/// The NATS subject of the job.
fn subject(args: &SubmitArgs) -> anyhow::Result<String> {
    Ok(match (&args.subject, target(args)?) {
        (Some(s), _) => s.clone(),
        (None, Some(t)) => t.nats_subject(),
        (None, None) => citadel_transports::nats::DEFAULT_SUBJECT.to_owned(),
    })
}

/// Builds the payload from `--payload` and the KEY=VALUE / KEY:=JSON fields.
pub fn build_payload(
    payload: Option<&str>,
    fields: &[String],
) -> anyhow::Result<Map<String, Value>> {
    let mut map = match payload {
        Some(text) => match serde_json::from_str::<Value>(text).context("--payload is not JSON")? {
            Value::Object(m) => m,
            _ => bail!("--payload must be a JSON object"),
        },
        None => Map::new(),
    };
    for f in fields {
        if let Some((k, v)) = f.split_once(":=") {
            let v: Value =
                serde_json::from_str(v).with_context(|| format!("{f}: not JSON after :="))?;
            map.insert(k.to_string(), v);
        } else if let Some((k, v)) = f.split_once('=') {
            map.insert(k.to_string(), Value::String(v.to_string()));
        } else {
            bail!("{f:?}: payload fields are KEY=VALUE or KEY:=JSON");
        }
    }
    Ok(map)
}

pub async fn run(args: SubmitArgs, data_dir: &Path) -> anyhow::Result<()> {
    let payload = build_payload(args.payload.as_deref(), &args.fields)?;
    let timeout = format::parse_duration(&args.timeout).context("--timeout")?;
    if let Some(broker) = broker(&args)? {
        let producer = broker
            .producer()
            .await
            .with_context(|| format!("connecting to {}", broker.name()))?;
        return match producer {
            TransportProducer::Redis(p) => redis_submit(&args, p, payload, timeout).await,
            TransportProducer::Nats(p) => nats_submit(&args, &p, payload, timeout).await,
            TransportProducer::ControlPlane { .. } => unreachable!("broker() names a broker"),
        };
    }
    let mut body = json!({"type": args.job_type, "payload": payload});
    // A control plane keeps the requirements with the job and hands it only to a node that
    // meets them (docs/transports.md#routing).
    match target(&args)? {
        Some(Target::Tag(t)) => body["requires"] = json!([t]),
        Some(Target::Node { org, node }) => {
            body["target_node"] = json!(node);
            if let Some(o) = org {
                body["org"] = json!(o);
            }
        }
        Some(Target::Org(o)) => body["org"] = json!(o),
        Some(Target::General(_)) | None => {}
    }
    let plane = args.plane.locate(data_dir)?;
    if let Some(id) = &args.id {
        body["id"] = id.clone().into();
    }
    if let Some(n) = args.max_attempts {
        body["maxAttempts"] = n.into();
    }
    let job = plane
        .call(Method::POST, "/api/v1/jobs", Some(&body))
        .await?;
    let id = job["id"].as_str().unwrap_or_default().to_string();
    if !args.wait {
        println!("{id}");
        return Ok(());
    }
    eprintln!("submitted {id} ({}) to {}", args.job_type, plane.url);
    let deadline = Instant::now() + timeout;
    let mut after = None;
    let mut outcome: Option<Result<(), String>> = None;
    let mut view = View::default();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("job {id}: no result within {}", args.timeout);
        }
        let follow = plane.follow_events(&id, after, |_, ev| {
            outcome = view.render(&ev);
            outcome.is_none()
        });
        match tokio::time::timeout(left, follow).await {
            Err(_) => bail!("job {id}: no result within {}", args.timeout),
            Ok(Ok(last)) => after = last.or(after),
            Ok(Err(e)) => {
                eprintln!("event stream interrupted ({e:#}); resuming");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        if let Some(o) = outcome.take() {
            // The final event goes out just before the worker's settlement reaches the plane:
            // wait for the record too, so what `citadel jobs` shows next agrees with us.
            await_settled(&plane, &id).await;
            return o.map_err(|e| anyhow::anyhow!("job {id} {e}"));
        }
        // The stream ended without a final event: the job may have been settled without one.
        let job = plane
            .call(Method::GET, &format!("/api/v1/jobs/{}", encode(&id)), None)
            .await?;
        match job["state"].as_str() {
            Some("succeeded") => return Ok(()),
            Some("dead") => bail!(
                "job {id} was dead-lettered: {}",
                job["dead_reason"].as_str().unwrap_or("")
            ),
            Some("failed") => bail!(
                "job {id} failed: {}",
                job["error"]
                    .as_str()
                    .or(job["output"].as_str())
                    .unwrap_or("")
            ),
            Some("cancelled") => bail!("job {id} was cancelled"),
            _ => {}
        }
    }
}

/// A final state of a control plane's job record.
const FINAL_STATES: [&str; 4] = ["succeeded", "dead", "failed", "cancelled"];

/// Waits (up to 10 s) until the plane's record of job `id` is final, after its final event was
/// seen; says so on stderr if it is not by then (the exit status still follows the event).
async fn await_settled(plane: &super::remote::Plane, id: &str) {
    let path = format!("/api/v1/jobs/{}", encode(id));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(job) = plane.call(Method::GET, &path, None).await {
            if job["state"]
                .as_str()
                .is_some_and(|s| FINAL_STATES.contains(&s))
            {
                return;
            }
        }
        if Instant::now() >= deadline {
            eprintln!("note: the control plane has not recorded job {id}'s settlement yet");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Prints a job's events; the progress chunks of a download drive a progress bar instead
/// (drawn only when stderr is a terminal).
#[derive(Debug, Default)]
struct View {
    bar: Option<indicatif::ProgressBar>,
}

impl View {
    fn render(&mut self, ev: &Value) -> Option<Result<(), String>> {
        if ev["type"] == "chunk" {
            let content = ev["data"]["content"].as_str().unwrap_or("");
            if let Ok(p) = serde_json::from_str::<Value>(content) {
                if p["type"] == "progress" {
                    self.progress(p["bytes"].as_u64().unwrap_or(0), p["total"].as_u64());
                    return None;
                }
            }
        } else if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        render(ev)
    }

    fn progress(&mut self, bytes: u64, total: Option<u64>) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t).with_style(
                    indicatif::ProgressStyle::with_template(
                        "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                ),
                None => indicatif::ProgressBar::new_spinner(),
            };
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar
        });
        bar.set_position(bytes);
    }
}

/// Prints one event; returns the outcome when the event ends the job.
fn render(ev: &Value) -> Option<Result<(), String>> {
    let data = &ev["data"];
    match ev["type"].as_str().unwrap_or("") {
        "claimed" => {
            eprintln!(
                "claimed by {}",
                data["meta"]["node_name"].as_str().unwrap_or("?")
            );
            None
        }
        "start" => {
            eprintln!("started: {}", data["message"].as_str().unwrap_or(""));
            None
        }
        "chunk" => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(data["content"].as_str().unwrap_or("").as_bytes());
            let _ = out.flush();
            None
        }
        "end" => {
            let result = &data["result"];
            match result.get("output").and_then(Value::as_str) {
                Some(s) if result.as_object().is_some_and(|o| o.len() <= 2) => println!("{s}"),
                // An LLM result: its content was streamed as chunks; the result on its own line.
                _ if result.get("content").is_some() => println!("\n{result}"),
                _ => println!("{result}"),
            }
            Some(Ok(()))
        }
        "error" => {
            let err = data["error"].as_str().unwrap_or("").to_string();
            if data["recoverable"] == true {
                eprintln!("attempt failed (it will be retried): {err}");
                None
            } else {
                eprintln!("failed: {err}");
                Some(Err(format!("failed: {err}")))
            }
        }
        "cancelled" => {
            let r = data["reason"].as_str().unwrap_or("").to_string();
            eprintln!("cancelled: {r}");
            Some(Err(format!("was cancelled: {r}")))
        }
        _ => None,
    }
}

/// A job for a broker's producer (Redis, NATS): its id (`--id`, else a fresh one), its payload
/// with `maxAttempts` when given, and when it was enqueued.
struct Job {
    id: String,
    payload: Value,
    now: String,
}

impl Job {
    fn new(args: &SubmitArgs, mut payload: Map<String, Value>) -> Self {
        if let Some(n) = args.max_attempts {
            payload.insert("maxAttempts".into(), n.into());
        }
        Self {
            id: args
                .id
                .clone()
                .unwrap_or_else(citadel_nexus::store::new_job_id),
            payload: Value::Object(payload),
            now: citadel_transports::events::rfc3339(std::time::SystemTime::now()),
        }
    }

    fn entry<'a>(&'a self, job_type: &'a str) -> JobEntry<'a> {
        JobEntry::new(&self.id, job_type, &self.payload).enqueued_at(&self.now)
    }
}

/// The broker `--redis-url` or `--nats-url` names, as the registry's transport settings; `None`
/// submits to a control plane. Naming two destinations is an error, whether a flag or its
/// environment variable named them: a job is never sent somewhere the user did not mean.
fn broker(args: &SubmitArgs) -> anyhow::Result<Option<TransportConfig>> {
    let named: Vec<&str> = [
        (
            args.plane.nexus_url.is_some(),
            "--nexus (CITADEL_NEXUS_URL)",
        ),
        (args.redis_url.is_some(), "--redis-url (CITADEL_REDIS_URL)"),
        (args.nats_url.is_some(), "--nats-url (CITADEL_NATS_URL)"),
    ]
    .into_iter()
    .filter_map(|(given, name)| given.then_some(name))
    .collect();
    if named.len() > 1 {
        bail!(
            "a job goes to one place, but {} are all set: unset all but one",
            named.join(" and ")
        );
    }
    Ok(match (&args.redis_url, &args.nats_url) {
        (Some(url), _) => Some(TransportConfig::Redis(RedisConfig::new(url, SUBMITTER))),
        (_, Some(url)) => Some(TransportConfig::Nats(NatsConfig::new(url, SUBMITTER))),
        _ => None,
    })
}

/// The name `citadel submit` gives itself to a broker.
const SUBMITTER: &str = "citadel-submit";

/// Redis: a job entry of docs/wire-format.md#job-entries ([`RedisProducer`]); with --wait, XREAD BLOCK on the job's event stream.
async fn redis_submit(
    args: &SubmitArgs,
    producer: RedisProducer,
    payload: Map<String, Value>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut conn = producer.connection();
    let job = Job::new(args, payload);
    let id = &job.id;
    let entry = job.entry(&args.job_type);
    let stream = stream(args)?;
    producer.enqueue(&stream, &entry).await.context("XADD")?;
    if !args.wait {
        println!("{id}");
        return Ok(());
    }
    eprintln!("submitted {id} ({}) to {stream}", args.job_type);
    let key = format!("stream:v1:{id}:events");
    let deadline = Instant::now() + timeout;
    let mut last = "0".to_string();
    let mut view = View::default();
    type Reply = Option<
        Vec<(
            String,
            Vec<(String, std::collections::HashMap<String, String>)>,
        )>,
    >;
    // Reading by entry id: a reconnect resumes right after the last event printed, so no
    // chunk is lost or printed twice.
    let mut retrier = citadel_transports::Backoff::RECONNECT.retrier();
    while Instant::now() < deadline {
        let read = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .query_async::<Reply>(&mut conn)
            .await;
        let reply = match read {
            Ok(r) => {
                retrier.reset();
                r
            }
            Err(e) => {
                eprintln!("event stream interrupted ({e}); resuming after entry {last}");
                tokio::time::sleep(retrier.next_delay()).await;
                let url = args.redis_url.as_deref().unwrap_or_default();
                if let Ok(p) = RedisProducer::connect(url).await {
                    conn = p.connection();
                }
                continue;
            }
        };
        for (_, entries) in reply.unwrap_or_default() {
            for (entry_id, fields) in entries {
                last = entry_id;
                let Some(text) = fields.get("event") else {
                    continue;
                };
                let ev: Value = serde_json::from_str(text).unwrap_or(Value::Null);
                if let Some(o) = view.render(&ev) {
                    return o.map_err(|e| anyhow::anyhow!("job {id} {e}"));
                }
            }
        }
    }
    bail!("job {id}: no result within {}", args.timeout)
}

/// NATS: a job message with `Nats-Msg-Id: jobId`; with --wait, the job's events from the
/// EVENTS stream (history first, so nothing published before we listened is missed).
async fn nats_submit(
    args: &SubmitArgs,
    producer: &NatsProducer,
    payload: Map<String, Value>,
    timeout: Duration,
) -> anyhow::Result<()> {
    use futures_util::StreamExt as _;

    let job = Job::new(args, payload);
    let id = &job.id;
    let job_id = citadel_transports::JobId::new(id.clone()).context("--id")?;
    let body = job.entry(&args.job_type).to_json();
    let subject = subject(args)?;
    producer.enqueue(&subject, &body).await.with_context(|| {
        format!(
            "publishing to {} (no stream holds it? `citadel work --transport nats` creates the JOBS stream)",
            subject
        )
    })?;
    if !args.wait {
        println!("{id}");
        return Ok(());
    }
    eprintln!("submitted {id} ({}) to {subject}", args.job_type);
    let follow = async {
        let mut events = producer
            .follow(&job_id)
            .await
            .context("following the job's events")?;
        while let Some(ev) = events.next().await {
            let (_, ev) = ev.context("reading the job's events")?;
            if let Some(o) = render(&ev) {
                return o.map_err(|e| anyhow::anyhow!("job {id} {e}"));
            }
        }
        bail!("job {id}: the event stream ended")
    };
    match tokio::time::timeout(timeout, follow).await {
        Ok(r) => r,
        Err(_) => bail!("job {id}: no result within {}", args.timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_fields() {
        let m = build_payload(
            Some(r#"{"a":1}"#),
            &["msg=hi".into(), "n:=5".into(), "e=".into()],
        )
        .unwrap();
        assert_eq!(Value::Object(m), json!({"a":1,"msg":"hi","n":5,"e":""}));
        assert!(build_payload(None, &["nope".into()]).is_err());
        assert!(build_payload(Some("[1]"), &[]).is_err());
    }
}
