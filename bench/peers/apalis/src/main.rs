//! apalis peer of the citadel benchmark: implements bench/peers/CONTRACT.md with
//! apalis 1.0 + apalis-redis 1.0.
//!
//! ```text
//! apalis-peer throughput --redis URL --prefix P [--concurrency C] [--jobs N]
//! apalis-peer latency    --redis URL --prefix P [--concurrency C] [--rate R] [--seconds D]
//! apalis-peer recovery   --redis URL --prefix P [--timeout S] [--give-up S]
//! (hidden) apalis-peer worker --redis URL --prefix P --name NAME [--timeout S]
//! common option: --poll-ms MS (idle poll interval, default 100)
//! ```
//!
//! Every apalis-redis key lives under `<prefix>:` (the apalis-redis queue name *is* the
//! prefix: `<prefix>:active`, `<prefix>:scheduled`, `<prefix>:meta:<ulid>`, ...). The one key
//! apalis-redis writes outside its queue, the global sorted set `core:apalis:queues:list`
//! (register_worker.lua adds `<prefix>:workers` to it), has our member removed at the end.
//!
//! How the worker is configured (what an apalis user would write):
//! * `RedisStorage::new(conn).with_config(Config::default().queue(prefix))`: defaults for
//!   everything else (batch_size 10, heartbeat 30 s, missed_heartbeats 10, lock_tasks,
//!   persist_results and emit_events on).
//! * `.poll_with_interval(100 ms)`: apalis-redis 1.0 has no built-in poll interval any more
//!   (earlier 1.0 betas had `poll_interval` = 100 ms in their config); without a poll strategy
//!   an idle worker only looks at Redis again on its heartbeat (30 s). The pubsub wake-up of
//!   `RedisStorageFactory` does not help: `push` always files the task in the scheduled set
//!   (run_at = now), and batch_push.lua publishes `...:available` only for unscheduled tasks.
//! * `WorkerBuilder::new(name).backend(storage).concurrency(C).build(handler)`: apalis's
//!   `WorkerBuilderExt::concurrency` (tower's `ConcurrencyLimitLayer`): at most C handler futures
//!   in flight, all driven by the worker's one task.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use apalis::prelude::*;
use apalis_redis::{Config, RedisStorage};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::json;

const SYSTEM: &str = "apalis";
const APALIS_VERSION: &str = "1.0.0";
const APALIS_REDIS_VERSION: &str = "1.0.0";
/// The one key apalis-redis keeps outside the queue's namespace.
const GLOBAL_QUEUES_KEY: &str = "core:apalis:queues:list";

/// The no-op job.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    id: u64,
}

type AnyErr = Box<dyn std::error::Error + Send + Sync>;

fn log(msg: impl AsRef<str>) {
    eprintln!("[apalis-peer] {}", msg.as_ref());
}

fn variant(a: &Args) -> String {
    let poll = a.u64_or("poll-ms", 100).unwrap_or(100);
    format!("apalis-redis {APALIS_REDIS_VERSION} (apalis {APALIS_VERSION}, poll {poll}ms)")
}

// ---------------------------------------------------------------------------------------------
// command line

struct Args {
    cmd: String,
    opts: HashMap<String, String>,
}

impl Args {
    fn parse() -> Result<Self, AnyErr> {
        let mut it = std::env::args().skip(1);
        let cmd = it
            .next()
            .ok_or("usage: apalis-peer throughput|latency|recovery --redis URL --prefix P ...")?;
        let mut opts = HashMap::new();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}").into());
            };
            let (k, v) = match name.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (
                    name.to_string(),
                    it.next().ok_or_else(|| format!("--{name} needs a value"))?,
                ),
            };
            opts.insert(k, v);
        }
        Ok(Self { cmd, opts })
    }
    fn str(&self, k: &str) -> Result<String, AnyErr> {
        self.opts
            .get(k)
            .cloned()
            .ok_or_else(|| format!("--{k} is required").into())
    }
    fn opt_f64(&self, k: &str) -> Result<Option<f64>, AnyErr> {
        match self.opts.get(k) {
            None => Ok(None),
            Some(v) => Ok(Some(
                v.parse().map_err(|_| format!("--{k}: bad number {v:?}"))?,
            )),
        }
    }
    fn f64_or(&self, k: &str, d: f64) -> Result<f64, AnyErr> {
        Ok(self.opt_f64(k)?.unwrap_or(d))
    }
    fn u64_or(&self, k: &str, d: u64) -> Result<u64, AnyErr> {
        match self.opts.get(k) {
            None => Ok(d),
            Some(v) => Ok(v.parse().map_err(|_| format!("--{k}: bad integer {v:?}"))?),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// process metrics

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix("VmHWM:") {
            let kb: f64 = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0.0);
            return kb / 1024.0;
        }
    }
    0.0
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

// ---------------------------------------------------------------------------------------------
// redis helpers

async fn plain_conn(url: &str) -> Result<redis::aio::MultiplexedConnection, AnyErr> {
    let client = redis::Client::open(url)?;
    Ok(client.get_multiplexed_async_connection().await?)
}

fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Deletes every key under `<prefix>:` and our member of apalis's global queue list.
async fn cleanup(url: &str, prefix: &str) -> Result<(), AnyErr> {
    let mut c = plain_conn(url).await?;
    let pattern = format!("{}:*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    let mut deleted = 0usize;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut c)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len();
            let _: () = redis::cmd("UNLINK").arg(&keys).query_async(&mut c).await?;
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    // An empty sorted set disappears by itself, so ZREM is all it takes.
    let _: i64 = c
        .zrem(GLOBAL_QUEUES_KEY, format!("{prefix}:workers"))
        .await?;
    log(format!("cleanup: deleted {deleted} keys under {prefix}:"));
    Ok(())
}

fn apalis_config(prefix: &str) -> Config {
    Config::default().queue(prefix)
}

// ---------------------------------------------------------------------------------------------
// the no-op worker used by throughput and latency

struct Shared {
    done: AtomicU64,
    /// stop the worker (gracefully) when `done` reaches this (0: never)
    stop_at: u64,
    base: Instant,
    /// handler start, ns since `base` + 1, indexed by job id (latency only)
    starts: Vec<AtomicU64>,
    /// ns since base + 1 when the handler of the stop_at-th job returned
    last_done: AtomicU64,
    /// ns since base + 1 when the first handler returned
    first_done: AtomicU64,
}

async fn noop(job: Job, st: Data<Arc<Shared>>, wrk: WorkerContext) -> Result<(), BoxDynError> {
    if let Some(slot) = st.starts.get(job.id as usize) {
        slot.store(st.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
    }
    let n = st.done.fetch_add(1, Ordering::AcqRel) + 1;
    if n == 1 {
        st.first_done
            .store(st.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
    }
    if st.stop_at > 0 && n == st.stop_at {
        st.last_done
            .store(st.base.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
        // Graceful stop: the worker finishes in-flight tasks, flushes the pending
        // acks (handle_results.lua) and only then returns from run().
        let _ = wrk.stop();
    }
    Ok(())
}

async fn storage(url: &str, prefix: &str) -> Result<RedisStorage<Job>, AnyErr> {
    let conn = apalis_redis::connect(url).await?;
    Ok(RedisStorage::new(conn).with_config(apalis_config(prefix)))
}

/// Spawns the worker; returns its context (to stop it) and the join handle of run().
async fn spawn_worker(
    url: &str,
    prefix: &str,
    name: &str,
    concurrency: usize,
    poll: Duration,
    shared: Arc<Shared>,
) -> Result<(WorkerContext, tokio::task::JoinHandle<Result<(), String>>), AnyErr> {
    let backend = storage(url, prefix).await?.poll_with_interval(poll);
    let ctx = WorkerContext::new(name);
    let worker = WorkerBuilder::new(ctx.clone())
        .backend(backend)
        .data(shared)
        // apalis's own concurrency knob: tower ConcurrencyLimitLayer around the handler.
        .concurrency(concurrency)
        .build(noop);
    let h = tokio::spawn(async move { worker.run().await.map_err(|e| e.to_string()) });
    Ok((ctx, h))
}

async fn wait_registered(
    url: &str,
    prefix: &str,
    name: &str,
    limit: Duration,
) -> Result<(), AnyErr> {
    let mut c = plain_conn(url).await?;
    let t0 = Instant::now();
    loop {
        let s: Option<f64> = c.zscore(format!("{prefix}:workers"), name).await?;
        if s.is_some() {
            return Ok(());
        }
        if t0.elapsed() > limit {
            return Err(format!("worker {name} did not register within {limit:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// throughput

/// apalis-redis 1.0.0's `push` files every task in `<q>:scheduled` (run_at = now), and
/// fetch_next.lua moves *all* due scheduled tasks to `<q>:active` with one
/// `RPUSH active unpack(ids)`. Lua's unpack stops at 8000 values ("too many results to
/// unpack"), so with a backlog of more than ~8000 due tasks the first fetch errors and the
/// worker dies. Above this many jobs the harness does that same move itself (in chunks, in the
/// untimed enqueue phase); below it, apalis-redis does it inside the timed part as usual.
const PROMOTE_ABOVE: u64 = 7000;

async fn promote_scheduled(url: &str, prefix: &str) -> Result<(), AnyErr> {
    let mut c = plain_conn(url).await?;
    let sched = format!("{prefix}:scheduled");
    let active = format!("{prefix}:active");
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let mut moved = 0usize;
    loop {
        let ids: Vec<String> = c.zrangebyscore_limit(&sched, 0, now, 0, 5000).await?;
        if ids.is_empty() {
            break;
        }
        moved += ids.len();
        let _: () = redis::pipe()
            .atomic()
            .rpush(&active, &ids)
            .ignore()
            .zrem(&sched, &ids)
            .ignore()
            .query_async(&mut c)
            .await?;
    }
    log(format!(
        "moved {moved} due tasks {sched} -> {active} ourselves (apalis-redis's fetch_next.lua fails with \
         'too many results to unpack' on more than ~8000 due tasks)"
    ));
    Ok(())
}

async fn throughput(a: &Args) -> Result<serde_json::Value, AnyErr> {
    let url = a.str("redis")?;
    let prefix = a.str("prefix")?;
    let conc = a.u64_or("concurrency", 16)? as usize;
    let n = a.u64_or("jobs", 20000)?;
    let poll = Duration::from_millis(a.u64_or("poll-ms", 100)?);
    if n == 0 || conc == 0 {
        return Err("--jobs and --concurrency must be > 0".into());
    }

    // 1. enqueue (not timed): push_bulk = one batch_push.lua call per chunk.
    let mut producer = storage(&url, &prefix).await?;
    let t_push = Instant::now();
    let chunk = 1000u64;
    let mut next = 0u64;
    while next < n {
        let end = (next + chunk).min(n);
        let jobs: Vec<Job> = (next..end).map(|id| Job { id }).collect();
        producer
            .push_bulk(jobs)
            .await
            .map_err(|e| format!("push_bulk failed: {e:?}"))?;
        next = end;
    }
    log(format!(
        "enqueued {n} jobs in {:.3}s",
        t_push.elapsed().as_secs_f64()
    ));
    if n > PROMOTE_ABOVE {
        promote_scheduled(&url, &prefix).await?;
    }

    // 2. the timed part: worker start -> N-th job acked in Redis (the worker stops itself
    //    gracefully at the N-th completion; run() returns once the acks are flushed).
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        stop_at: n,
        base: Instant::now(),
        starts: Vec::new(),
        last_done: AtomicU64::new(0),
        first_done: AtomicU64::new(0),
    });
    let name = format!("apalis-peer-tp-{}", std::process::id());
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let (_ctx, h) = spawn_worker(&url, &prefix, &name, conc, poll, shared.clone()).await?;
    let res = h.await?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let rss = peak_rss_mb();
    res.map_err(|e| format!("worker failed: {e}"))?;

    let handler_n = shared.done.load(Ordering::Acquire);
    let last_done = shared.last_done.load(Ordering::Relaxed);
    let first_done = shared.first_done.load(Ordering::Relaxed);
    let first_done_s = Duration::from_nanos(first_done.saturating_sub(1))
        .saturating_sub(t0.duration_since(shared.base))
        .as_secs_f64();
    let last_done_s = if last_done > 0 {
        (Duration::from_nanos(last_done - 1).saturating_sub(t0.duration_since(shared.base)))
            .as_secs_f64()
    } else {
        f64::NAN
    };
    // 3. check apalis-redis's own bookkeeping (not timed).
    let mut c = plain_conn(&url).await?;
    let done_set: u64 = c.scard(format!("{prefix}:done")).await?;
    let inflight: u64 = c.scard(format!("{prefix}:inflight:{name}")).await?;
    let active: u64 = c.llen(format!("{prefix}:active")).await?;
    log(format!(
        "handlers ran {handler_n}; N-th handler returned at {last_done_s:.3}s, worker stopped (acks flushed) at {secs:.3}s; \
         {prefix}:done has {done_set}, inflight {inflight}, active {active}"
    ));
    if done_set != n {
        return Err(format!("only {done_set} of {n} jobs are in {prefix}:done").into());
    }
    Ok(json!({
        "system": SYSTEM,
        "variant": variant(a),
        "concurrency": conc,
        "jobs": n,
        "seconds": round3(secs),
        "jobs_per_sec": (n as f64 / secs).round(),
        "worker_cpu_seconds": round3(cpu),
        "worker_peak_rss_mb": (rss * 10.0).round() / 10.0,
        "first_done_s": round3(first_done_s),
    }))
}

// ---------------------------------------------------------------------------------------------
// latency

fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let n = sorted.len();
    let rank = ((p / 100.0) * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

async fn latency(a: &Args) -> Result<serde_json::Value, AnyErr> {
    let url = a.str("redis")?;
    let prefix = a.str("prefix")?;
    let conc = a.u64_or("concurrency", 16)? as usize;
    let rate = a.f64_or("rate", 200.0)?;
    let secs = a.f64_or("seconds", 5.0)?;
    let poll = Duration::from_millis(a.u64_or("poll-ms", 100)?);
    if rate <= 0.0 || secs <= 0.0 || conc == 0 {
        return Err("--rate, --seconds and --concurrency must be > 0".into());
    }
    let total = (rate * secs).floor() as u64;
    let shared = Arc::new(Shared {
        done: AtomicU64::new(0),
        stop_at: 0,
        base: Instant::now(),
        starts: (0..total).map(|_| AtomicU64::new(0)).collect(),
        last_done: AtomicU64::new(0),
        first_done: AtomicU64::new(0),
    });
    let name = format!("apalis-peer-lat-{}", std::process::id());
    let (ctx, h) = spawn_worker(&url, &prefix, &name, conc, poll, shared.clone()).await?;
    wait_registered(&url, &prefix, &name, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The producer: its own connection, one push (one batch_push.lua call) per job.
    let mut producer = storage(&url, &prefix).await?;
    let mut enq = vec![0u64; total as usize];
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = tokio::time::Instant::now();
    for id in 0..total {
        tokio::time::sleep_until(start + period * id as u32).await;
        enq[id as usize] = shared.base.elapsed().as_nanos() as u64;
        producer
            .push(Job { id })
            .await
            .map_err(|e| format!("push failed: {e:?}"))?;
    }
    log(format!(
        "pushed {total} jobs in {:.3}s",
        start.elapsed().as_secs_f64()
    ));
    // Let the last jobs start (bounded).
    let t_wait = Instant::now();
    while shared.done.load(Ordering::Acquire) < total && t_wait.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = ctx.stop();
    match tokio::time::timeout(Duration::from_secs(30), h).await {
        Ok(Ok(Err(e))) => log(format!("worker ended with error: {e}")),
        Ok(Err(e)) => log(format!("worker task panicked: {e}")),
        Err(_) => log("worker did not stop within 30s"),
        Ok(Ok(Ok(()))) => {}
    }
    let mut samples: Vec<f64> = Vec::with_capacity(total as usize);
    for id in 0..total as usize {
        let s = shared.starts[id].load(Ordering::Relaxed);
        if s > 0 {
            samples.push((s - 1).saturating_sub(enq[id]) as f64 / 1e6);
        }
    }
    if samples.len() < total as usize {
        log(format!("only {} of {total} jobs started", samples.len()));
    }
    if samples.is_empty() {
        return Err("no job started".into());
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(json!({
        "system": SYSTEM,
        "variant": variant(a),
        "concurrency": conc,
        "rate": rate,
        "jobs": samples.len(),
        "p50_ms": round3(nearest_rank(&samples, 50.0)),
        "p90_ms": round3(nearest_rank(&samples, 90.0)),
        "p99_ms": round3(nearest_rank(&samples, 99.0)),
        "p999_ms": round3(nearest_rank(&samples, 99.9)),
        "max_ms": round3(*samples.last().unwrap()),
    }))
}

// ---------------------------------------------------------------------------------------------
// recovery

/// apalis-redis's orphan detection: a worker whose last heartbeat (a ZADD of the unix second
/// into `<queue>:workers`, every `heartbeat_interval`) is older than
/// `heartbeat_interval * missed_heartbeats` (`Config::orphaned_duration`) has its inflight set
/// moved back to `<queue>:active` by reenqueue_orphaned.lua, which any *other* live worker runs
/// at each of its own heartbeats. `--timeout S` keeps missed_heartbeats at its default (10) and
/// sets heartbeat_interval = S / 10, so orphaned_duration == S.
fn recovery_config(prefix: &str, timeout: Option<f64>) -> Config {
    let c = apalis_config(prefix);
    match timeout {
        None => c,
        Some(s) => {
            let missed = c.missed_heartbeats;
            c.heartbeat_interval(Duration::from_secs_f64(s / missed as f64))
        }
    }
}

struct HoldState {
    conn: redis::aio::MultiplexedConnection,
    started_key: String,
    name: String,
}

async fn hold(_job: Job, st: Data<Arc<HoldState>>) -> Result<(), BoxDynError> {
    let mut c = st.conn.clone();
    let rec = format!("{} {}", st.name, epoch_ms());
    let _: i64 = c.rpush(&st.started_key, rec).await?;
    tokio::time::sleep(Duration::from_secs(3600)).await;
    Ok(())
}

/// Hidden subcommand: one recovery worker process.
async fn worker_cmd(a: &Args) -> Result<(), AnyErr> {
    let url = a.str("redis")?;
    let prefix = a.str("prefix")?;
    let name = a.str("name")?;
    let timeout = a.opt_f64("timeout")?;
    let poll = Duration::from_millis(a.u64_or("poll-ms", 100)?);
    let conn = apalis_redis::connect(url.as_str()).await?;
    let backend = RedisStorage::<Job>::new(conn)
        .with_config(recovery_config(&prefix, timeout))
        .poll_with_interval(poll);
    let st = Arc::new(HoldState {
        conn: plain_conn(&url).await?,
        started_key: format!("{prefix}:started"),
        name: name.clone(),
    });
    let worker = WorkerBuilder::new(name.as_str())
        .backend(backend)
        .data(st)
        .concurrency(1)
        .build(hold);
    worker
        .run()
        .await
        .map_err(|e| format!("worker {name}: {e}"))?;
    Ok(())
}

/// Children are killed (whole process group) when this is dropped.
struct Children(Vec<(String, Child)>);

impl Children {
    fn spawn(&mut self, name: &str, extra: &[String]) -> Result<u32, AnyErr> {
        use std::os::unix::process::CommandExt;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("worker").args(extra).arg("--name").arg(name);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        cmd.process_group(0);
        unsafe {
            cmd.pre_exec(|| {
                // die with the parent, whatever happens to it
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let pid = child.id();
        self.0.push((name.to_string(), child));
        Ok(pid)
    }
    fn kill_group(pid: u32) {
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in self.0.iter_mut() {
            Self::kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn started_records(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> Result<Vec<(String, u64)>, AnyErr> {
    let recs: Vec<String> = c.lrange(key, 0, -1).await?;
    Ok(recs
        .iter()
        .filter_map(|r| {
            let (n, t) = r.split_once(' ')?;
            Some((n.to_string(), t.parse().ok()?))
        })
        .collect())
}

async fn recovery(a: &Args) -> Result<serde_json::Value, AnyErr> {
    let url = a.str("redis")?;
    let prefix = a.str("prefix")?;
    let timeout = a.opt_f64("timeout")?;
    let give_up = a.f64_or("give-up", 120.0)?;
    let poll_ms = a.u64_or("poll-ms", 100)?;
    if let Some(t) = timeout {
        if t <= 0.0 {
            return Err("--timeout must be > 0".into());
        }
    }
    let cfg = recovery_config(&prefix, timeout);
    let orphan_s = cfg.heartbeat_interval.as_secs_f64() * cfg.missed_heartbeats as f64;
    let setting = match timeout {
        None => "default".to_string(),
        Some(t) => format!("timeout={t}s"),
    };
    log(format!(
        "recovery: heartbeat_interval={:?} missed_heartbeats={} -> orphaned after {orphan_s}s",
        cfg.heartbeat_interval, cfg.missed_heartbeats
    ));

    let mut extra = vec![
        "--redis".to_string(),
        url.clone(),
        "--prefix".to_string(),
        prefix.clone(),
        "--poll-ms".to_string(),
        poll_ms.to_string(),
    ];
    if let Some(t) = timeout {
        extra.push("--timeout".into());
        extra.push(t.to_string());
    }
    let pid = std::process::id();
    let name_a = format!("apalis-peer-A-{pid}");
    let name_b = format!("apalis-peer-B-{pid}");
    let started_key = format!("{prefix}:started");
    let mut c = plain_conn(&url).await?;
    let mut children = Children(Vec::new());

    // A alone first, so that A is the one that takes the hold job.
    let pid_a = children.spawn(&name_a, &extra)?;
    wait_registered(&url, &prefix, &name_a, Duration::from_secs(20)).await?;
    let mut producer = storage(&url, &prefix).await?;
    producer
        .push(Job { id: 0 })
        .await
        .map_err(|e| format!("push failed: {e:?}"))?;
    let t0 = Instant::now();
    let rec_a = loop {
        let recs = started_records(&mut c, &started_key).await?;
        if let Some(r) = recs.first() {
            break r.clone();
        }
        if t0.elapsed() > Duration::from_secs(30) {
            return Err("worker A did not start the hold job within 30s".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    if rec_a.0 != name_a {
        return Err(format!("hold job started by {} instead of A", rec_a.0).into());
    }
    log(format!("A ({name_a}) runs the hold job"));

    // Then B; make sure it is registered (and heartbeating) before A dies.
    children.spawn(&name_b, &extra)?;
    wait_registered(&url, &prefix, &name_b, Duration::from_secs(20)).await?;
    // 0.5 s plus a random fraction of a heartbeat interval, so that the kill does not always
    // fall at the same phase of B's heartbeat (and of the unix-second heartbeat stamps).
    let jitter = (SystemTime::now().duration_since(UNIX_EPOCH)?.subsec_nanos() as f64 / 1e9)
        * cfg.heartbeat_interval.as_secs_f64().min(2.0);
    tokio::time::sleep(Duration::from_secs_f64(0.5 + jitter)).await;

    Children::kill_group(pid_a);
    let kill_ms = epoch_ms();
    let t_kill = Instant::now();
    log("SIGKILLed A's process group");

    let mut recovered: Option<(String, u64)> = None;
    while t_kill.elapsed().as_secs_f64() < give_up {
        let recs = started_records(&mut c, &started_key).await?;
        if recs.len() >= 2 {
            recovered = Some(recs[1].clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(children);

    let timeout_s = match timeout {
        Some(t) => t,
        None => orphan_s,
    };
    let out = match recovered {
        Some((who, ms)) if who == name_b => {
            let rec = (ms as f64 - kill_ms as f64) / 1000.0;
            json!({
                "system": SYSTEM,
                "variant": variant(a),
                "setting": setting,
                "timeout_s": timeout_s,
                "recovery_s": round3(rec),
                "note": format!(
                    "B's heartbeat (every heartbeat_interval={}s) ran reenqueue_orphaned.lua once A's last heartbeat was older than heartbeat_interval x missed_heartbeats={}s (unix-second resolution)",
                    cfg.heartbeat_interval.as_secs_f64(), orphan_s),
            })
        }
        Some((who, _)) => return Err(format!("second start was by {who}, expected B").into()),
        None => json!({
            "system": SYSTEM,
            "variant": variant(a),
            "setting": setting,
            "timeout_s": timeout_s,
            "recovery_s": null,
            "note": format!(
                "not recovered within --give-up {give_up}s: apalis-redis re-enqueues a dead worker's inflight tasks only when another worker's heartbeat (every heartbeat_interval={}s) finds the dead worker's last heartbeat older than heartbeat_interval x missed_heartbeats = {}s, so recovery would take about {}-{}s (or set a shorter heartbeat_interval/missed_heartbeats)",
                cfg.heartbeat_interval.as_secs_f64(), orphan_s, orphan_s - cfg.heartbeat_interval.as_secs_f64(), orphan_s + cfg.heartbeat_interval.as_secs_f64() + 1.0),
        }),
    };
    Ok(out)
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("apalis-peer: {e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(async {
        if args.cmd == "worker" {
            return match worker_cmd(&args).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("apalis-peer worker: {e}");
                    1
                }
            };
        }
        let (url, prefix) = match (args.str("redis"), args.str("prefix")) {
            (Ok(u), Ok(p)) => (u, p),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("apalis-peer: {e}");
                return 2;
            }
        };
        let res = match args.cmd.as_str() {
            "throughput" => throughput(&args).await,
            "latency" => latency(&args).await,
            "recovery" => recovery(&args).await,
            other => {
                eprintln!("apalis-peer: unknown command {other:?} (throughput|latency|recovery)");
                return 2;
            }
        };
        if let Err(e) = cleanup(&url, &prefix).await {
            eprintln!("apalis-peer: cleanup failed: {e}");
        }
        match res {
            Ok(v) => {
                println!("{v}");
                0
            }
            Err(e) => {
                eprintln!("apalis-peer {}: {e}", args.cmd);
                1
            }
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    std::process::exit(code);
}
