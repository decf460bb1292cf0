//! The terminal inside the real `citadel work`: started only when the manifest's
//! `permissions.console.enabled` is true, with its tokens from the control plane named in the
//! node's identity, and nothing listening otherwise.

use std::time::Duration;

use super::super::support::plane::{eventually, free_port};
use super::super::support::worker::Worker;
use super::{Client, TokenApi, CREDENTIAL};

/// A data directory enrolled with the control plane at `url` (organization `org-1`).
fn enrolled(dir: &std::path::Path, url: &str, manifest: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let identity = serde_json::json!({"node_id": "n1", "org_id": super::ORG, "control_plane": url});
    std::fs::write(dir.join("identity.json"), identity.to_string()).unwrap();
    std::fs::write(dir.join("node-token"), format!("{CREDENTIAL}\n")).unwrap();
    std::fs::write(dir.join("citadel.yaml"), manifest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_a_terminal_when_the_console_is_enabled() {
    let api = TokenApi::default();
    api.add("alice-token", "alice", super::ORG, None);
    let url = api.serve().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    // The old key still works (with a warning).
    enrolled(
        &data,
        &url,
        "permissions:\n  terminal:\n    enabled: true\n    tmux: off\n",
    );
    let port = free_port();
    let worker = Worker::start_on(
        &[],
        &data,
        &["--terminal-listen", &format!("127.0.0.1:{port}")],
    );
    eventually(Duration::from_secs(60), "the terminal listening", || {
        worker.logs().contains("citadel: terminal on")
    });
    assert!(
        worker.logs().contains("permissions.console"),
        "no warning about the old key"
    );
    let mut c = Client::connect(&format!("ws://127.0.0.1:{port}/terminal?token=alice-token")).await;
    c.type_line("echo $((40+2))").await;
    c.read_until(0, b"42", Duration::from_secs(20)).await;
    assert_eq!(
        c.run("env | grep -c CITADEL || true").await,
        "0",
        "no citadel variable in the shell"
    );
    assert!(!worker.logs().contains("alice-token"), "a token was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listens_when_the_console_is_disabled() {
    let api = TokenApi::default();
    let url = api.serve().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    enrolled(
        &data,
        &url,
        "permissions:\n  console:\n    enabled: false\n",
    );
    let port = free_port();
    let worker = Worker::start_on(
        &[],
        &data,
        &["--terminal-listen", &format!("127.0.0.1:{port}")],
    );
    eventually(Duration::from_secs(60), "the worker running", || {
        worker.logs().contains("status on")
    });
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    assert_eq!(api.calls(), 0, "no token fetch without a console");
}
