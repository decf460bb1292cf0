//! The real Runner (journal, handlers, settle path) on the WebSocket push, in this process, and
//! `citadel work --transport websocket` as a child process.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use citadel::handlers::{Handler, HandlerError, JobContext, Registry, ShellPolicy};
use citadel::runner::{Counters, Runner, RunnerConfig};
use citadel_journal::{Journal, JournalOptions};
use citadel_transports::{JobSource, WebSocketSource};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::source::{cfg, sse_types};
use crate::support::plane::*;

/// Counts the runs of each job, then sleeps `ms` (honouring cancellation).
#[derive(Debug, Default)]
struct Counting {
    runs: Mutex<HashMap<String, u32>>,
}

#[async_trait::async_trait]
impl Handler for Counting {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        *self
            .runs
            .lock()
            .unwrap()
            .entry(ctx.job.id.to_string())
            .or_default() += 1;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(150)) => Ok(json!({})),
            () = ctx.cancel.cancelled() => Err(HandlerError::retryable("cancelled")),
        }
    }
}

/// Panics on every run.
#[derive(Debug)]
struct Panicking;

#[async_trait::async_trait]
impl Handler for Panicking {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        panic!("boom in {}", ctx.job.id)
    }
}

struct Worker {
    source: Arc<WebSocketSource>,
    counters: Arc<Counters>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn worker(
    p: &Plane,
    dir: &std::path::Path,
    lease: Duration,
    counting: Option<Arc<Counting>>,
) -> Worker {
    let (journal, _) = Journal::open(dir, JournalOptions::default()).unwrap();
    let mut c = cfg(p, "runner-1");
    c.lease = lease;
    let source = Arc::new(WebSocketSource::connect(c).await.unwrap());
    let mut registry = Registry::builtin(ShellPolicy::default());
    if let Some(h) = counting {
        registry.register("count", h);
    }
    registry.register("panic", Arc::new(Panicking));
    let mut config = RunnerConfig::new("node-ws", "runner-1");
    config.concurrency = 4;
    config.lease = lease;
    config.drain_timeout = Duration::from_millis(300);
    let dyn_source: Arc<dyn JobSource> = source.clone();
    let runner = Runner::new(dyn_source, journal, registry, config);
    let counters = runner.counters();
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let task = tokio::spawn(async move { runner.run(token).await });
    Worker {
        source,
        counters,
        shutdown,
        task,
    }
}

fn state(p: &Plane, id: &str) -> Value {
    p.json("GET", &format!("/api/v1/jobs/{id}"), None)
}

async fn until_state(p: &Plane, id: &str, want: &str, within: Duration) -> Value {
    let started = Instant::now();
    loop {
        let r = state(p, id);
        if r["state"] == want {
            return r;
        }
        assert!(started.elapsed() < within, "{id} is not {want}: {r}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_works_the_push_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let w = worker(
        &p,
        &tmp.path().join("journal"),
        Duration::from_secs(1),
        None,
    )
    .await;
    p.submit(json!({"id": "e1", "type": "echo", "payload": {"msg": "hi"}}));
    p.submit(json!({"id": "f1", "type": "fail", "payload": {"maxAttempts": 2}}));
    // Three times its lease: extended all along, never redelivered.
    p.submit(json!({"id": "s1", "type": "sleep", "payload": {"ms": 3000}}));
    let r = until_state(&p, "e1", "succeeded", Duration::from_secs(20)).await;
    assert_eq!(r["result"], json!({"msg": "hi"}));
    assert_eq!(sse_types(&p, "e1"), ["claimed", "start", "end"]);
    let r = until_state(&p, "f1", "dead", Duration::from_secs(20)).await;
    assert_eq!(r["attempts"], 2);
    assert_eq!(
        sse_types(&p, "f1"),
        ["claimed", "start", "error", "claimed", "start", "error"]
    );
    let r = until_state(&p, "s1", "succeeded", Duration::from_secs(20)).await;
    assert_eq!(r["attempts"], 1, "a renewed lease never expires: {r}");

    // Cancelled mid-run: the handler stops within a second.
    p.submit(json!({"id": "k1", "type": "sleep", "payload": {"ms": 30000}}));
    let started = Instant::now();
    // `claimed` and `start` are recorded: the handler runs.
    while state(&p, "k1")["events"].as_u64().unwrap_or(0) < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "k1 never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let asked = Instant::now();
    p.json("POST", "/api/v1/jobs/k1/cancel", None);
    until_state(&p, "k1", "cancelled", Duration::from_secs(5)).await;
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "cancellation took {took:?}"
    );
    assert_eq!(sse_types(&p, "k1"), ["claimed", "start", "cancelled"]);

    // Shutdown: a job still running after the drain timeout is given back unspent.
    p.submit(json!({"id": "z1", "type": "sleep", "payload": {"ms": 30000}}));
    until_state(&p, "z1", "leased", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.shutdown.cancel();
    w.task.await.unwrap().unwrap();
    let r = state(&p, "z1");
    assert_eq!(
        (r["state"].as_str(), r["attempts"].as_u64()),
        (Some("queued"), Some(0)),
        "{r}"
    );
    assert_eq!(
        w.counters
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_control_plane_restart_under_a_running_worker_loses_nothing_and_runs_nothing_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let port = p.port;
    let counting = Arc::new(Counting::default());
    let w = worker(
        &p,
        &tmp.path().join("journal"),
        Duration::from_secs(30),
        Some(counting.clone()),
    )
    .await;
    let n = 40;
    for i in 0..n {
        p.submit(json!({"id": format!("j{i}"), "type": "count"}));
    }
    let started = Instant::now();
    while w
        .counters
        .succeeded
        .load(std::sync::atomic::Ordering::Relaxed)
        < 8
    {
        assert!(started.elapsed() < Duration::from_secs(30), "no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    p.kill9();
    // Jobs that ran before the kill: the settlements of those that finished meanwhile fail
    // while the control plane is away.
    let ran_before: Vec<String> = counting.runs.lock().unwrap().keys().cloned().collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let p = Plane::start_on(&dir, port);
    let started = Instant::now();
    loop {
        let done = p.json("GET", "/api/v1/jobs?state=succeeded&limit=1000", None)["jobs"]
            .as_array()
            .unwrap()
            .len();
        if done == n {
            break;
        }
        // Well inside the 30 s lease: a job whose push frame died with the connection is sent
        // again after the new `hello`, not left until its lease expires.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{done} of {n} jobs succeeded after the restart"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(w.source.connections() >= 2, "the worker never reconnected");
    let runs = counting.runs.lock().unwrap().clone();
    assert_eq!(runs.len(), n, "every job ran");
    let twice: Vec<_> = runs.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "jobs run twice: {twice:?}");
    // Settled by the runner's retried settlement over the new connection, not redelivered (a
    // redelivery would have counted a second attempt).
    for id in &ran_before {
        let r = p.json("GET", &format!("/api/v1/jobs/{id}"), None);
        assert_eq!(r["attempts"], 1, "{r}");
    }
    w.shutdown.cancel();
    w.task.await.unwrap().unwrap();
}

#[test]
fn citadel_work_takes_jobs_over_the_websocket() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let out = citadel(&data)
        .args(["work", "--transport", "websocket"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--ws-url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let log = tmp.path().join("work.log");
    let mut worker = citadel(&data)
        .args([
            "--log",
            "citadel=debug,citadel_transports=debug,warn",
            "work",
            "--transport",
            "websocket",
            "--nexus-url",
        ])
        .arg(p.url())
        .env("CITADEL_NEXUS_TOKEN", &p.token)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    p.submit(json!({"id": "cli-1", "type": "echo", "payload": {"via": "ws"}}));
    eventually(Duration::from_secs(30), "the worker ran the job", || {
        p.json("GET", "/api/v1/jobs/cli-1", None)["state"] == "succeeded"
    });
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("websocket ws://127.0.0.1:"), "{logs}");
    assert!(!logs.contains(&p.token), "the token reached the log");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(worker.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(worker.wait().unwrap().success());
}

/// A handler that panics has failed its attempt: an `error` event naming the panic, a retry, the
/// dead-letter queue after its attempts, and the worker goes on working.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_handler_fails_its_attempts_and_the_worker_goes_on() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let w = worker(
        &p,
        &tmp.path().join("journal"),
        Duration::from_secs(1),
        None,
    )
    .await;
    p.submit(json!({"id": "p1", "type": "panic", "payload": {"maxAttempts": 2}}));
    let r = until_state(&p, "p1", "dead", Duration::from_secs(20)).await;
    assert_eq!(r["attempts"], 2, "{r}");
    assert_eq!(
        sse_types(&p, "p1"),
        ["claimed", "start", "error", "claimed", "start", "error"]
    );
    let errors = r["errors"].to_string();
    assert!(errors.contains("the handler panicked: boom in p1"), "{r}");
    p.submit(json!({"id": "after", "type": "echo", "payload": {"msg": "still here"}}));
    let r = until_state(&p, "after", "succeeded", Duration::from_secs(20)).await;
    assert_eq!(r["result"], json!({"msg": "still here"}));
    // The slot of the last job is given back just after its settlement reaches the plane.
    let freed = Instant::now() + Duration::from_secs(10);
    while w
        .counters
        .in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
        != 0
    {
        assert!(
            Instant::now() < freed,
            "a slot stayed taken after every job settled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.shutdown.cancel();
    w.task.await.unwrap().unwrap();
}
