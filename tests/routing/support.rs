//! What the routing tests share: a worker with its own manifest, which jobs it started (from its
//! journal), and jobs enqueued on a named stream.

use std::path::Path;
use std::process::Command;

use citadel_harness::redis::Server;
use citadel_transports::redis::RedisProducer;
use citadel_transports::JobEntry;
use redis::aio::MultiplexedConnection;
use serde_json::Value;

use crate::support::worker::Worker;

/// Starts a worker named `node` on `data`, with `manifest` as its citadel.yaml.
pub fn worker(server: &Server, data: &Path, node: &str, manifest: &str, extra: &[&str]) -> Worker {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("citadel.yaml"), manifest).unwrap();
    let mut args = vec!["--node-name", node];
    args.extend_from_slice(extra);
    Worker::start(server, data, &args)
}

/// Asserts that `w` (called `node` in the message) started exactly `n` jobs, all with ids
/// starting with `prefix`.
pub fn assert_ran_only(w: &Worker, node: &str, n: usize, prefix: &str) {
    let ran = started(w);
    assert!(
        ran.len() == n && ran.iter().all(|j| j.starts_with(prefix)),
        "{node} ran {ran:?}, expected {n} jobs named {prefix}…"
    );
}

/// The jobs this worker started, in the order its journal has them.
pub fn started(w: &Worker) -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["journal", "--data-dir"])
        .arg(&w.data)
        .arg("export")
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"]["type"] == "started")
        .map(|e| e["job_id"].as_str().unwrap().to_string())
        .collect()
}

/// Enqueues a job of type `ty` with `payload` on `stream`.
pub async fn enqueue_on(
    c: &MultiplexedConnection,
    stream: &str,
    id: &str,
    ty: &str,
    payload: Value,
) {
    RedisProducer::new(c.clone())
        .enqueue(stream, &JobEntry::new(id, ty, &payload))
        .await
        .expect("enqueue a job");
}

/// Whether this machine has a GPU, as `citadel platform --tags` sees it.
pub fn has_gpu() -> bool {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["platform", "--tags"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.starts_with("gpu:"))
}

/// `citadel status --json` of the worker running on `w`'s data directory.
pub fn status_of(w: &Worker) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["status", "--json", "--data-dir"])
        .arg(&w.data)
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// The streams the worker's status says it reads.
pub fn streams_of(w: &Worker) -> Vec<String> {
    status_of(w)["routing"]["streams"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["stream"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The worker's `/metrics` text.
pub async fn metrics_of(w: &Worker) -> String {
    let addr = std::fs::read_to_string(w.data.join("status.addr")).unwrap_or_default();
    let http = citadel::handlers::http_client(std::time::Duration::from_secs(2)).unwrap();
    let r = http
        .get(format!("http://{}/metrics", addr.trim()))
        .send()
        .await
        .unwrap();
    r.text().await.unwrap()
}
