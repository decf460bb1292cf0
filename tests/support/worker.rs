//! Running `citadel work` as a child process and watching what it does through Redis.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use citadel_harness::redis::{self as harness, Server};
use redis::aio::MultiplexedConnection;
use serde_json::Value;

/// A `citadel work` process with its own data directory.
pub struct Worker {
    child: Option<Child>,
    pub data: PathBuf,
    pub log: PathBuf,
}

impl Worker {
    /// Starts a worker on `data` (kept by the caller so a restart can reuse it).
    pub fn start(server: &Server, data: &Path, extra: &[&str]) -> Self {
        Self::start_on(&["--redis-url", &server.url()], data, extra)
    }

    /// Starts a worker with the transport flags `transport` (e.g. `--transport nats --nats-url
    /// URL`) on `data`.
    pub fn start_on(transport: &[&str], data: &Path, extra: &[&str]) -> Self {
        std::fs::create_dir_all(data).unwrap();
        let log = data.join(format!(
            "worker-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        // Defaults that a test's own flags replace.
        let mut args: Vec<&str> = Vec::new();
        for (flag, value) in [("--lease", "1500ms"), ("--node-name", "node-a")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let child = Command::new(env!("CARGO_BIN_EXE_citadel"))
            .args([
                "--log",
                "citadel=debug,citadel_transports=debug,warn",
                "work",
                "--data-dir",
            ])
            .arg(data)
            .args(transport)
            .args(&args)
            .args(extra)
            .env_remove("CITADEL_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            child: Some(child),
            data: data.to_path_buf(),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid()).unwrap();
        rustix::process::kill_process(pid, sig).unwrap();
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let started = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return status;
            }
            assert!(
                started.elapsed() < within,
                "the worker did not exit within {within:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `citadel journal show JOB --json` on this worker's data directory (works while it runs).
    pub fn journal(&self, job: &str) -> Value {
        let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
            .args(["journal", "--data-dir"])
            .arg(&self.data)
            .args(["show", job, "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "journal show {job}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The names of the journal events of `job`, in order.
    pub fn journal_events(&self, job: &str) -> Vec<String> {
        self.journal(job)["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"]["type"].as_str().unwrap().to_string())
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The events of a job so far, from its capped event stream (docs/wire-format.md#job-events JSON, in order).
pub async fn events(c: &mut MultiplexedConnection, job: &str) -> Vec<Value> {
    harness::range(c, &format!("stream:v1:{job}:events"))
        .await
        .into_iter()
        .map(|(_, fields)| serde_json::from_str(harness::field(&fields, "event").unwrap()).unwrap())
        .collect()
}

pub fn types(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the job has an event of type `ty` (and returns all its events).
pub async fn wait_for(
    c: &mut MultiplexedConnection,
    job: &str,
    ty: &str,
    within: Duration,
) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let evs = events(c, job).await;
        if evs.iter().any(|e| e["type"] == ty) {
            return evs;
        }
        assert!(
            started.elapsed() < within,
            "no `{ty}` event for {job} within {within:?}; got {:?}",
            types(&evs)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `f` holds.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> F,
) {
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// XADD of a job in the wire format: `jobId`, `type`, `payload` as a JSON string.
pub async fn submit(c: &mut MultiplexedConnection, id: &str, ty: &str, payload: Value) -> String {
    harness::enqueue(
        c,
        &[
            ("jobId", id),
            ("type", ty),
            ("payload", &payload.to_string()),
        ],
    )
    .await
}

/// The status hash `job:{id}:status`.
pub async fn status(
    c: &mut MultiplexedConnection,
    id: &str,
) -> std::collections::HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(format!("job:{id}:status"))
        .query_async(c)
        .await
        .unwrap()
}

/// The dead-letter entries as field maps.
pub async fn dead_letters(
    c: &mut MultiplexedConnection,
) -> Vec<std::collections::HashMap<String, String>> {
    harness::range(c, "dlq:v1:gpu-general")
        .await
        .into_iter()
        .map(|(_, f)| f.into_iter().collect())
        .collect()
}
