//! Faults under which a delivery used to stick or a job ran twice (docs/faults.md), each injected
//! into a runner working a real redis-server in this process: the same `jobId` enqueued twice, a
//! journal that refuses a settlement, an `end` or a settlement the transport refuses, a dead
//! letter that did not reach the transport, a worker cut off from Redis for twice its lease
//! while a shell command runs, and a worker that dies holding a journaled success (on Redis and
//! on a real nats-server). Every test ends with nothing pending and each job run as often as
//! its outcome allows.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use citadel::handlers::{Handler, HandlerError, JobContext, Registry, ShellPolicy};
use citadel::runner::{Runner, RunnerConfig};
use citadel_harness::proxy::Proxy;
use citadel_harness::redis::{self as harness, Server};
use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent, Phase};
use citadel_transports::{
    Capabilities, Health, Incoming, JobId, JobSource, Lease, Receipt, SettleContext, Settlement,
    SourceError, WireEvent,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::support::worker::{events, submit, types};

const WAIT: Duration = Duration::from_secs(30);

/// Counts its runs per job; sleeps `ms`, fails for good with `fail`, and on a job's first run
/// with `sabotage` appends to the journal what makes the runner's own settlement refused.
#[derive(Debug)]
struct Counting {
    runs: Mutex<HashMap<String, u32>>,
    journal: Journal,
}

impl Counting {
    fn runs(&self, id: &str) -> u32 {
        self.runs.lock().unwrap().get(id).copied().unwrap_or(0)
    }
}

#[async_trait]
impl Handler for Counting {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let id = ctx.job.id.clone();
        let run = {
            let mut runs = self.runs.lock().unwrap();
            let n = runs.entry(id.to_string()).or_default();
            *n += 1;
            *n
        };
        let ms = ctx.job.payload["ms"].as_u64().unwrap_or(100);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("cancelled")),
        }
        if ctx.job.payload["sabotage"] == true && run == 1 {
            for e in [
                EventKind::Interrupted {
                    reason: "sabotaged by the test".into(),
                },
                EventKind::Released,
            ] {
                self.journal
                    .append(NewEvent::new(id.clone(), "redis", e).delivery("sabotage"))
                    .await
                    .unwrap();
            }
        }
        if ctx.job.payload["fail"] == true {
            if ctx.job.payload["retry"] == true {
                return Err(HandlerError::retryable("this job fails every time"));
            }
            return Err(HandlerError::permanent("this job always fails"));
        }
        Ok(json!({"run": run}))
    }
}

/// A real Redis source that refuses, once each, the publishes and settlements the test names,
/// and records any `error` or `cancelled` published before the journal holds its settlement.
#[derive(Debug)]
struct Flaky {
    inner: Arc<dyn JobSource>,
    journal: Journal,
    refuse_publish: Mutex<HashSet<&'static str>>,
    refuse_settle: Mutex<HashSet<&'static str>>,
    /// Jobs whose first cancellation check makes the journal skip them, so their `started` is
    /// refused.
    refuse_start: Mutex<HashSet<String>>,
    early: Mutex<Vec<String>>,
    /// The job whose `end` kills this worker: from then on no call reaches Redis (`dead`).
    die_at_end: Mutex<Option<String>>,
    dead: CancellationToken,
}

impl Flaky {
    /// Never returns once the worker died (a killed process answers nothing).
    async fn alive(&self) {
        if self.dead.is_cancelled() {
            std::future::pending::<()>().await;
        }
    }
}

#[async_trait]
impl JobSource for Flaky {
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
        if self.refuse_settle.lock().unwrap().remove(settlement.name()) {
            return Err(SourceError::Broker("refused by the test".into()));
        }
        self.inner.settle(receipt, settlement, ctx).await
    }
    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        self.alive().await;
        self.inner.extend_lease(receipt).await
    }
    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        self.alive().await;
        // The runner's first question about a job, before it journals the start.
        if self.refuse_start.lock().unwrap().remove(job.as_str()) {
            let skip = EventKind::Skipped {
                reason: "sabotaged by the test".into(),
            };
            let e = NewEvent::new(job.clone(), "redis", skip).delivery("sabotage");
            self.journal.append(e).await.unwrap();
        }
        self.inner.is_cancelled(job).await
    }
    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        self.alive().await;
        let ty = event.event_type();
        if ty == "end" && self.die_at_end.lock().unwrap().as_deref() == Some(event.job_id.as_str())
        {
            self.dead.cancel();
            self.alive().await;
        }
        if matches!(ty, "error" | "cancelled") {
            let phase = self.journal.state(&event.job_id).and_then(|s| s.phase);
            if !matches!(phase, Some(Phase::Settled(_))) {
                self.early.lock().unwrap().push(format!(
                    "{} `{ty}` while the journal said {phase:?}",
                    event.job_id
                ));
            }
        }
        if self.refuse_publish.lock().unwrap().remove(ty) {
            return Err(SourceError::Broker("refused by the test".into()));
        }
        self.inner.publish(event).await
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

struct Worker {
    flaky: Arc<Flaky>,
    handler: Arc<Counting>,
    journal: Journal,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Worker {
    async fn start(redis_url: &str, consumer: &str, dir: &Path, shell: &Path) -> Self {
        Self::start_with(redis_url, consumer, dir, shell, Duration::from_millis(500)).await
    }

    /// A worker whose Redis calls may each wait `command_timeout` for an answer.
    async fn start_with(
        redis_url: &str,
        consumer: &str,
        dir: &Path,
        shell: &Path,
        command_timeout: Duration,
    ) -> Self {
        let mut cfg = citadel_transports::RedisConfig::new(redis_url.to_string(), consumer);
        cfg.block = Duration::from_millis(200);
        cfg.lease = Duration::from_secs(2);
        cfg.reclaim_interval = Duration::from_millis(50);
        cfg.command_timeout = command_timeout;
        let inner = Arc::new(citadel_transports::RedisSource::connect(cfg).await.unwrap());
        Self::start_on(inner, consumer, dir, shell)
    }

    /// A worker named `consumer` on `inner`, a connected source of any transport with a 2 s
    /// lease, journaling in `dir`.
    fn start_on(inner: Arc<dyn JobSource>, consumer: &str, dir: &Path, shell: &Path) -> Self {
        let (journal, _) = Journal::open(dir, JournalOptions::default()).unwrap();
        let flaky = Arc::new(Flaky {
            inner,
            journal: journal.clone(),
            refuse_publish: Mutex::default(),
            refuse_settle: Mutex::default(),
            refuse_start: Mutex::default(),
            early: Mutex::default(),
            die_at_end: Mutex::default(),
            dead: CancellationToken::new(),
        });
        let handler = Arc::new(Counting {
            runs: Mutex::default(),
            journal: journal.clone(),
        });
        let mut registry = Registry::builtin(ShellPolicy {
            enabled: true,
            workspace: shell.to_path_buf(),
            ..ShellPolicy::default()
        });
        registry.register("count", handler.clone());
        let mut config = RunnerConfig::new(consumer, consumer);
        config.concurrency = 4;
        config.lease = Duration::from_secs(2);
        config.max_attempts = 5;
        config.retry = citadel_transports::Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(100),
        );
        let source: Arc<dyn JobSource> = flaky.clone();
        let runner = Runner::new(source, journal.clone(), registry, config);
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { runner.run(token).await });
        Self {
            flaky,
            handler,
            journal,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }

    /// Waits until this worker died at the `end` of `id` (`die_at_end`), its journal holding
    /// the job's success.
    async fn died_holding_success(&self, id: &str) {
        let begun = Instant::now();
        while !self.flaky.dead.is_cancelled() {
            assert!(
                begun.elapsed() < WAIT,
                "{id}: the worker never reached its end"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let acked = Some(Phase::Settled(citadel_journal::SettledAs::Acked));
        assert_eq!(self.phase(id), acked, "{id}: the journal holds the success");
    }

    fn phase(&self, id: &str) -> Option<Phase> {
        self.journal
            .state(&JobId::new(id).unwrap())
            .and_then(|s| s.phase)
    }
}

/// Waits until the group has no pending entry and `f` holds.
async fn settled(c: &mut redis::aio::MultiplexedConnection, what: &str, f: impl Fn() -> bool) {
    let begun = Instant::now();
    loop {
        let pending = harness::pending(c).await;
        if pending.is_empty() && f() {
            return;
        }
        assert!(
            begun.elapsed() < WAIT,
            "{what}: still pending after {WAIT:?}: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn setup() -> (Server, tempfile::TempDir) {
    (Server::start().await, tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_job_enqueued_twice_runs_once_and_nothing_stays_pending() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    let ids: Vec<String> = (0..10).map(|i| format!("twice-{i}")).collect();
    for id in &ids {
        for _ in 0..2 {
            submit(&mut c, id, "count", json!({"ms": 300})).await;
        }
    }
    settled(&mut c, "duplicate entries", || {
        ids.iter()
            .all(|id| w.phase(id) == Some(Phase::Settled(citadel_journal::SettledAs::Acked)))
    })
    .await;
    for id in &ids {
        assert_eq!(w.handler.runs(id), 1, "{id} ran once");
        let evs = events(&mut c, id).await;
        let ends = types(&evs).iter().filter(|t| *t == "end").count();
        assert_eq!(ends, 2, "{id}: both entries answered with the result");
        let starts = types(&evs).iter().filter(|t| *t == "start").count();
        assert_eq!(starts, 1, "{id}: started once");
    }
    // Every entry left the stream with its ack: the stream holds only unfinished work.
    let until = Instant::now() + WAIT;
    loop {
        let len: usize = redis::cmd("XLEN")
            .arg(harness::STREAM)
            .query_async(&mut c)
            .await
            .unwrap();
        if len == 0 {
            break;
        }
        assert!(Instant::now() < until, "{len} entries left after the drain");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settlement_the_journal_refuses_leaves_the_delivery_to_its_lease() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    submit(&mut c, "refused", "count", json!({"sabotage": true})).await;
    settled(&mut c, "refused settlement", || {
        w.handler.runs("refused") >= 1
    })
    .await;
    // The success was recorded on Redis before the journal refused it: the redelivery is
    // acked from the completion record with the result, not run again.
    assert_eq!(
        w.handler.runs("refused"),
        1,
        "the redelivery did not run it"
    );
    let evs = types(&events(&mut c, "refused").await);
    assert_eq!(evs.iter().filter(|t| *t == "start").count(), 1, "{evs:?}");
    assert_eq!(evs.last().map(String::as_str), Some("end"), "{evs:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_the_journal_refuses_leaves_the_delivery_to_its_lease() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    w.flaky
        .refuse_start
        .lock()
        .unwrap()
        .insert("unstarted".into());
    submit(&mut c, "unstarted", "count", json!({})).await;
    settled(&mut c, "refused start", || {
        w.phase("unstarted") == Some(Phase::Settled(citadel_journal::SettledAs::Acked))
    })
    .await;
    assert_eq!(
        w.handler.runs("unstarted"),
        1,
        "run once, by the redelivery"
    );
    // The refused delivery said it was claimed, and never that it started.
    assert_eq!(
        types(&events(&mut c, "unstarted").await),
        ["claimed", "claimed", "start", "end"]
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_the_transport_refuses_is_published_by_the_redelivery() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    w.flaky.refuse_publish.lock().unwrap().insert("end");
    submit(&mut c, "no-end", "count", json!({})).await;
    settled(&mut c, "refused end", || {
        w.phase("no-end") == Some(Phase::Settled(citadel_journal::SettledAs::Acked))
    })
    .await;
    assert_eq!(w.handler.runs("no-end"), 1, "never run again");
    assert_eq!(
        types(&events(&mut c, "no-end").await).last().unwrap(),
        "end"
    );
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_the_transport_refuses_is_sent_again_from_the_journal() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    w.flaky.refuse_settle.lock().unwrap().insert("ack");
    submit(&mut c, "no-ack", "count", json!({})).await;
    // Settled in the journal at once; pending until the redelivery is acked: by the transport's
    // completion record on Redis (written with `end`), or else from the journal.
    settled(&mut c, "refused ack", || {
        w.journal
            .state(&JobId::new("no-ack").unwrap())
            .is_some_and(|s| s.phase == Some(Phase::Settled(citadel_journal::SettledAs::Acked)))
    })
    .await;
    assert_eq!(w.handler.runs("no-ack"), 1, "never run again");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_the_transport_refused_is_dead_lettered_from_the_journal() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    w.flaky.refuse_settle.lock().unwrap().insert("dead_letter");
    submit(&mut c, "doomed", "count", json!({"fail": true})).await;
    settled(&mut c, "refused dead letter", || {
        w.journal
            .state(&JobId::new("doomed").unwrap())
            .is_some_and(|s| s.deliveries == 2 && s.is_settled())
    })
    .await;
    assert_eq!(
        w.handler.runs("doomed"),
        1,
        "a permanent failure never runs again"
    );
    let dlq = crate::support::worker::dead_letters(&mut c).await;
    assert_eq!(dlq.len(), 1, "{dlq:?}");
    let evs = types(&events(&mut c, "doomed").await);
    assert_eq!(evs.iter().filter(|t| *t == "start").count(), 1, "{evs:?}");
    w.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_and_cancelled_go_out_only_once_their_settlement_is_journaled() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let w = Worker::start(&server.url(), "w1", &tmp.path().join("j"), tmp.path()).await;
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:called-off")
        .arg("1")
        .query_async(&mut c)
        .await
        .unwrap();
    submit(&mut c, "called-off", "count", json!({})).await;
    submit(&mut c, "broken", "count", json!({"fail": true})).await;
    submit(
        &mut c,
        "flaky",
        "count",
        json!({"fail": true, "retry": true, "maxAttempts": 2}),
    )
    .await;
    settled(&mut c, "errors", || {
        ["called-off", "broken", "flaky"]
            .iter()
            .all(|id| matches!(w.phase(id), Some(Phase::Settled(_))))
    })
    .await;
    assert_eq!(
        types(&events(&mut c, "called-off").await),
        ["claimed", "cancelled"]
    );
    assert_eq!(
        types(&events(&mut c, "broken").await),
        ["claimed", "start", "error"]
    );
    let early = w.flaky.early.lock().unwrap().clone();
    assert!(early.is_empty(), "published before journaled: {early:?}");
    w.stop().await;
}

/// A worker killed once its journal holds a job's success, before it published the `end`: the
/// other worker takes the entry over after the lease and must ack it without running it (the
/// chaos suite's `sigkill-lifecycle-points` saw an ordinary job succeed on both nodes this way,
/// its success flushed with another job's settlement just before that job's crash point).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_success_journaled_by_a_worker_that_died_is_not_run_again_elsewhere() {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let a = Worker::start(&server.url(), "node-a", &tmp.path().join("ja"), tmp.path()).await;
    *a.flaky.die_at_end.lock().unwrap() = Some("once".into());
    submit(&mut c, "once", "count", json!({})).await;
    a.died_holding_success("once").await;
    let b = Worker::start(&server.url(), "node-b", &tmp.path().join("jb"), tmp.path()).await;
    settled(&mut c, "the dead worker's entry", || true).await;
    assert_eq!(
        (a.handler.runs("once"), b.handler.runs("once")),
        (1, 0),
        "ran on node-a only"
    );
    assert_eq!(b.phase("once"), None, "node-b never received it");
    let evs = types(&events(&mut c, "once").await);
    assert_eq!(evs.iter().filter(|t| *t == "start").count(), 1, "{evs:?}");
    assert_eq!(evs.last().map(String::as_str), Some("end"), "{evs:?}");
    b.stop().await;
    a.task.abort();
}

/// The same on NATS: node-a dies when it goes to publish the job's `end`, its journal holding
/// the success; the server redelivers the message after the lease (`ack_wait`) to node-b. Its
/// fetcher pulled before the job was stored, so this is an ordinary redelivery, not one of the
/// deliveries looked up after a reconnection: node-b must ack it with the recorded result
/// without running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nats_a_success_journaled_by_a_worker_that_died_is_not_run_again_elsewhere() {
    use citadel_harness::nats::{ctx, enqueue_job, one, Server as Nats, SUBJECT};
    use citadel_transports::nats::{DEFAULT_CONSUMER, DEFAULT_STREAM};
    let server = Nats::start();
    let tmp = tempfile::tempdir().unwrap();
    let b_src = Arc::new(server.source("node-b").await);
    let p = server.producer().await;
    // node-b's fetcher reads the job stream's last sequence at its first pull, before `once`.
    enqueue_job(&p, "warm-up", "noop").await;
    let warm = one(b_src.as_ref()).await;
    b_src
        .settle(warm.receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    let a_src = Arc::new(server.source("node-a").await);
    let a = Worker::start_on(a_src, "node-a", &tmp.path().join("ja"), tmp.path());
    *a.flaky.die_at_end.lock().unwrap() = Some("once".into());
    let body = json!({"jobId": "once", "type": "count", "payload": {}});
    p.enqueue(SUBJECT, &body).await.unwrap();
    a.died_holding_success("once").await;
    let b = Worker::start_on(b_src, "node-b", &tmp.path().join("jb"), tmp.path());
    let begun = Instant::now();
    loop {
        let unsettled = p.unsettled(DEFAULT_STREAM, DEFAULT_CONSUMER).await.unwrap();
        if unsettled == 0 {
            break;
        }
        assert!(begun.elapsed() < WAIT, "{unsettled} jobs still unsettled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (a.handler.runs("once"), b.handler.runs("once")),
        (1, 0),
        "ran on node-a only"
    );
    assert_eq!(b.phase("once"), None, "node-b never received it");
    let evs = p.events(&JobId::new("once").unwrap()).await.unwrap();
    let kinds = citadel_harness::nats::types(&evs);
    assert_eq!(
        kinds.iter().filter(|t| *t == "start").count(),
        1,
        "{kinds:?}"
    );
    let last = evs.last().unwrap();
    assert_eq!(
        (last["type"].clone(), last["data"]["result"].clone()),
        (json!("end"), json!({"run": 1})),
        "{evs:?}"
    );
    b.stop().await;
    a.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_for_twice_its_lease_stops_its_shell_command_before_another_runs_it() {
    partitioned_shell_job(Proxy::cut, Duration::from_millis(500)).await;
}

/// The same partition where packets are dropped instead of refused: the worker's calls to Redis
/// (its cancellation poll among them) hang for the default 5 s command timeout rather than fail,
/// and the fence must still kill the command at once, not when a hung call gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_calls_hang_for_twice_its_lease_stops_its_shell_command_in_time() {
    partitioned_shell_job(Proxy::stall, Duration::from_secs(5)).await;
}

async fn partitioned_shell_job(partition: fn(&Proxy), command_timeout: Duration) {
    let (server, tmp) = setup().await;
    let mut c = server.conn().await;
    let upstream = format!("127.0.0.1:{}", url_port(&server.url()))
        .parse()
        .unwrap();
    let proxy = Proxy::start(upstream).await.unwrap();
    let cut_url = format!("redis://{}/", proxy.addr());
    let a = Worker::start_with(
        &cut_url,
        "node-a",
        &tmp.path().join("ja"),
        tmp.path(),
        command_timeout,
    )
    .await;
    let file = tmp.path().join("side-effects");
    let command = format!("sleep 3; echo once >> {}", file.display());
    submit(
        &mut c,
        "append",
        "shell_command",
        json!({ "command": command }),
    )
    .await;
    crate::support::worker::wait_for(&mut c, "append", "start", WAIT).await;
    partition(&proxy);
    let b = Worker::start(&server.url(), "node-b", &tmp.path().join("jb"), tmp.path()).await;
    let cut_at = Instant::now();
    let mut fenced_after = None;
    while cut_at.elapsed() < Duration::from_secs(4) {
        let interrupted = Some(Phase::Finished(citadel_journal::Outcome::Interrupted));
        if fenced_after.is_none() && a.phase("append") == interrupted {
            fenced_after = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.restore();
    // Behind a stall, the attempt is journaled `interrupted` once the hung call returns (the
    // command itself was killed at the fence).
    while fenced_after.is_none() && cut_at.elapsed() < Duration::from_secs(15) {
        let interrupted = Some(Phase::Finished(citadel_journal::Outcome::Interrupted));
        if a.phase("append") == interrupted {
            fenced_after = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fenced_after = fenced_after.expect("worker a fenced its attempt while cut off");
    eprintln!("fenced {fenced_after:?} after the cut (lease 2 s, margin 0.5 s)");
    settled(&mut c, "partitioned shell job", || {
        std::fs::read_to_string(&file).is_ok_and(|s| !s.is_empty())
    })
    .await;
    // Whatever either worker still had in hand has had time to finish.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let lines = std::fs::read_to_string(&file).unwrap();
    assert_eq!(lines, "once\n", "the command's side effect happened once");
    let ended = types(&events(&mut c, "append").await)
        .iter()
        .filter(|t| *t == "end")
        .count();
    assert_eq!(ended, 1, "one `end`");
    a.stop().await;
    b.stop().await;
}

fn url_port(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// The same on the control plane (nexus transport): node-a dies when it goes to publish the
/// job's `end`, its journal holding the success; its lease expires on the plane, which must
/// finish the job with the success node-a recorded under that lease instead of handing it to
/// node-b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_nexus_a_success_journaled_by_a_worker_that_died_is_not_run_again_elsewhere() {
    use citadel_transports::{NexusConfig, NexusSource};
    plane_twin(|p, node| {
        let mut cfg = NexusConfig::new(p.url(), node);
        cfg.token = Some(p.token.clone());
        cfg.lease = Duration::from_secs(2);
        async move { Arc::new(NexusSource::connect(cfg).await.unwrap()) as Arc<dyn JobSource> }
    })
    .await;
}

/// The same over the control plane's WebSocket push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_websocket_a_success_journaled_by_a_worker_that_died_is_not_run_again_elsewhere() {
    use citadel_transports::websocket::ws_url;
    use citadel_transports::{WebSocketConfig, WebSocketSource};
    plane_twin(|p, node| {
        let mut cfg = WebSocketConfig::new(ws_url(&p.url()).unwrap(), node);
        cfg.token = Some(p.token.clone());
        cfg.lease = Duration::from_secs(2);
        async move { Arc::new(WebSocketSource::connect(cfg).await.unwrap()) as Arc<dyn JobSource> }
    })
    .await;
}

/// node-a on `connect(plane, "node-a")` dies holding the success of `once`; node-b starts
/// after it: the plane ends the job with node-a's result and node-b never runs it.
async fn plane_twin<F, Fut>(connect: F)
where
    F: Fn(&crate::support::plane::Plane, &str) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn JobSource>>,
{
    use crate::support::plane::Plane;
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let a = Worker::start_on(
        connect(&p, "node-a").await,
        "node-a",
        &tmp.path().join("ja"),
        tmp.path(),
    );
    *a.flaky.die_at_end.lock().unwrap() = Some("once".into());
    p.submit(json!({"id": "once", "type": "count", "payload": {}}));
    a.died_holding_success("once").await;
    let b = Worker::start_on(
        connect(&p, "node-b").await,
        "node-b",
        &tmp.path().join("jb"),
        tmp.path(),
    );
    let begun = Instant::now();
    let job = loop {
        let job = p.json("GET", "/api/v1/jobs/once", None);
        if !matches!(job["state"].as_str(), Some("queued" | "leased")) {
            break job;
        }
        assert!(begun.elapsed() < WAIT, "still unsettled: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (a.handler.runs("once"), b.handler.runs("once")),
        (1, 0),
        "ran on node-a only: {job}"
    );
    assert_eq!(b.phase("once"), None, "node-b never received it");
    assert_eq!(
        (
            job["state"].clone(),
            job["result"].clone(),
            job["attempts"].clone()
        ),
        (json!("succeeded"), json!({"run": 1}), json!(1)),
        "{job}"
    );
    let body = p.events("once", "").body;
    let evs = crate::support::plane::sse_field(&body, "event");
    let count = |t: &str| evs.iter().filter(|e| **e == t).count();
    assert_eq!((count("start"), count("end")), (1, 1), "{evs:?}");
    b.stop().await;
    a.task.abort();
}
