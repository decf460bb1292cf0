//! A worker at concurrency 1 claims its next job as soon as a handler returned, while that job's
//! settlement (completion record, journal, `end`, ack) is still in flight: killed at that
//! moment, on a real redis-server, it must lose no job and run none twice. The worker here dies
//! when it goes to publish the first job's `end` with the second job already started behind it
//! (from then on no call reaches Redis, as for a killed process); a second worker takes both
//! entries over after the lease.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use citadel::handlers::{Handler, HandlerError, JobContext, Registry, ShellPolicy};
use citadel::runner::{Runner, RunnerConfig};
use citadel_harness::redis::{self as harness, Server};
use citadel_journal::{Journal, JournalOptions};
use citadel_transports::{
    Capabilities, Health, Incoming, JobId, JobSource, Lease, Receipt, SettleContext, Settlement,
    SourceError, WireEvent,
};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::worker::{events, submit, types};

const WAIT: Duration = Duration::from_secs(30);

/// Counts the runs of each job that returned (a run cut off by the worker's death is not one);
/// on the worker that dies, `second` runs until it is cut off.
#[derive(Debug, Default)]
struct Finished {
    runs: Mutex<HashMap<String, u32>>,
    slow_second: bool,
}

impl Finished {
    fn of(&self, id: &str) -> u32 {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Handler for Finished {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        if self.slow_second && ctx.job.id.as_str() == "second" {
            ctx.cancel.cancelled().await;
            return Err(HandlerError::retryable("cancelled"));
        }
        let id = ctx.job.id.to_string();
        *self.runs.lock().unwrap().entry(id).or_default() += 1;
        Ok(json!({"ok": true}))
    }
}

/// Real Redis that holds the `end` of `first` until the job `last` started (or [`WAIT`] passed:
/// then `overlapped` stays false), then dies if `dies` (no call reaches Redis any more) or lets
/// it go.
#[derive(Debug)]
struct DiesBehind {
    inner: Arc<dyn JobSource>,
    last: &'static str,
    dies: bool,
    last_started: Notify,
    overlapped: Mutex<bool>,
    dead: CancellationToken,
}

impl DiesBehind {
    fn new(inner: Arc<dyn JobSource>, last: &'static str, dies: bool) -> Self {
        Self {
            inner,
            last,
            dies,
            last_started: Notify::new(),
            overlapped: Mutex::new(false),
            dead: CancellationToken::new(),
        }
    }
}

impl DiesBehind {
    async fn alive(&self) {
        if self.dead.is_cancelled() {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl JobSource for DiesBehind {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        self.alive().await;
        tokio::select! {
            got = self.inner.next(max) => got,
            () = self.dead.cancelled() => std::future::pending().await,
        }
    }
    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        self.alive().await;
        self.inner.settle(receipt, settlement, ctx).await
    }
    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        self.alive().await;
        self.inner.extend_lease(receipt).await
    }
    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        self.alive().await;
        self.inner.is_cancelled(job).await
    }
    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        self.alive().await;
        let (ty, id) = (event.event_type(), event.job_id.as_str());
        if ty == "end" && id == "first" {
            let started = tokio::time::timeout(WAIT, self.last_started.notified()).await;
            *self.overlapped.lock().unwrap() = started.is_ok();
            if self.dies {
                self.dead.cancel();
            }
            self.alive().await;
        }
        let published = self.inner.publish(event).await;
        if ty == "start" && id == self.last {
            self.last_started.notify_one();
        }
        published
    }
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        self.alive().await;
        self.inner.record_success(end).await
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    fn abandon(&self, receipt: &Receipt) {
        self.inner.abandon(receipt);
    }
    async fn close(&self) -> Vec<Incoming> {
        self.inner.close().await
    }
}

/// A runner at concurrency 1 on `source` (a 2 s lease), journaling in `dir`; `slow_second`
/// keeps the job `second` running until it is cut off.
fn start(
    source: Arc<dyn JobSource>,
    name: &str,
    dir: &std::path::Path,
    slow_second: bool,
) -> (Arc<Finished>, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let (journal, _) = Journal::open(dir, JournalOptions::default()).unwrap();
    let handler = Arc::new(Finished {
        runs: Mutex::default(),
        slow_second,
    });
    let mut registry = Registry::builtin(ShellPolicy::default());
    registry.register("finish", handler.clone());
    let mut config = RunnerConfig::new(name, name);
    config.concurrency = 1;
    config.lease = Duration::from_secs(2);
    let runner = Runner::new(source, journal, registry, config);
    let task = tokio::spawn(async move { runner.run(CancellationToken::new()).await });
    (handler, task)
}

async fn redis_source(url: &str, name: &str) -> Arc<dyn JobSource> {
    let mut cfg = citadel_transports::RedisConfig::new(url.to_string(), name);
    cfg.block = Duration::from_millis(200);
    cfg.lease = Duration::from_secs(2);
    cfg.reclaim_interval = Duration::from_millis(50);
    Arc::new(citadel_transports::RedisSource::connect(cfg).await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_with_a_settlement_in_flight_behind_a_new_job_loses_and_repeats_nothing() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut c = server.conn().await;
    submit(&mut c, "first", "finish", json!({})).await;
    submit(&mut c, "second", "finish", json!({})).await;
    let dies = Arc::new(DiesBehind::new(
        redis_source(&server.url(), "node-a").await,
        "second",
        true,
    ));
    let (a, a_task) = start(dies.clone(), "node-a", &tmp.path().join("ja"), true);
    tokio::time::timeout(WAIT + WAIT, dies.dead.cancelled())
        .await
        .expect("node-a never reached the first job's `end`");
    assert!(
        *dies.overlapped.lock().unwrap(),
        "the second job did not start while the first one's settlement was in flight"
    );
    a_task.abort();
    let b_source = redis_source(&server.url(), "node-b").await;
    let (b, b_task) = start(b_source, "node-b", &tmp.path().join("jb"), false);
    let begun = Instant::now();
    loop {
        let ended = [
            events(&mut c, "first").await,
            events(&mut c, "second").await,
        ]
        .iter()
        .all(|e| types(e).last().map(String::as_str) == Some("end"));
        if ended && harness::pending(&mut c).await.is_empty() {
            break;
        }
        assert!(
            begun.elapsed() < WAIT + WAIT,
            "not both settled: first {:?}, second {:?}",
            types(&events(&mut c, "first").await),
            types(&events(&mut c, "second").await)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let runs = |id| a.of(id) + b.of(id);
    assert_eq!(
        (runs("first"), runs("second")),
        (1, 1),
        "each job finished once"
    );
    for id in ["first", "second"] {
        let evs = types(&events(&mut c, id).await);
        assert_eq!(
            evs.iter().filter(|t| *t == "end").count(),
            1,
            "{id}: {evs:?}"
        );
    }
    b_task.abort();
}

/// At concurrency 1 the settlements of several finished jobs are in flight together (they share
/// the journal's fsync and the round trips to Redis): with the first job's `end` held back, the
/// second job settles and the third one starts. Each still ends once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_concurrency_one_a_held_settlement_does_not_stop_the_jobs_behind_it() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut c = server.conn().await;
    let ids = ["first", "second", "third"];
    for id in ids {
        submit(&mut c, id, "finish", json!({})).await;
    }
    let holds = Arc::new(DiesBehind::new(
        redis_source(&server.url(), "node-a").await,
        "third",
        false,
    ));
    let (a, a_task) = start(holds.clone(), "node-a", &tmp.path().join("ja"), false);
    let begun = Instant::now();
    while !(harness::pending(&mut c).await.is_empty() && ids.iter().all(|id| a.of(id) == 1)) {
        assert!(
            begun.elapsed() < WAIT + WAIT,
            "the three jobs did not all finish"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        *holds.overlapped.lock().unwrap(),
        "the third job did not start while the first one's settlement was held"
    );
    for id in ids {
        let evs = types(&events(&mut c, id).await);
        assert_eq!(
            evs.iter().filter(|t| *t == "end").count(),
            1,
            "{id}: {evs:?}"
        );
    }
    a_task.abort();
}
