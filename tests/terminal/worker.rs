//! The terminal inside the real `citadel work`: started only when the manifest's
//! `permissions.console.enabled` is true, with its tokens from the real control plane
//! (`citadel nexus`) the node is enrolled with, and nothing listening otherwise.

use std::time::Duration;

use super::super::support::plane::{eventually, free_port, raw, Plane};
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

/// Enrols a node into `org` on the control plane by device authorization; its id and credential.
fn enrol(p: &Plane, org: &str) -> (String, String) {
    let post = |path: &str, body: serde_json::Value| {
        let r = raw(p.port, "POST", path, &[], Some(&body.to_string()));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    };
    let start = post(
        "/api/fabric/device-auth/start",
        serde_json::json!({"client_id": "citadel", "hostname": "gpu-t", "machine_id": "gpu-t-id"}),
    );
    let approve = serde_json::json!({"user_code": start["user_code"], "org": org});
    p.json("POST", "/api/v1/device-auth/approve", Some(approve));
    let creds = post(
        "/api/fabric/device-auth/token",
        serde_json::json!({"device_code": start["device_code"],
               "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}),
    );
    let id = creds["node_id"].as_str().unwrap().to_string();
    (id, creds["access_token"].as_str().unwrap().to_string())
}

/// A terminal token issued by the control plane's admin API.
fn issue(p: &Plane, user: &str, org: &str) -> String {
    let body = serde_json::json!({"user_id": user, "org_id": org});
    let made = p.json("POST", "/api/v1/terminal/tokens", Some(body));
    made["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_serves_a_terminal_with_tokens_of_a_real_control_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    let (node_id, credential) = enrol(&plane, "acme");
    let alice = issue(&plane, "alice", "acme");
    let stranger = issue(&plane, "mallory", "beta");
    let data = tmp.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let identity =
        serde_json::json!({"node_id": node_id, "org_id": "acme", "control_plane": plane.url()});
    std::fs::write(data.join("identity.json"), identity.to_string()).unwrap();
    std::fs::write(data.join("node-token"), format!("{credential}\n")).unwrap();
    // The old key still works (with a warning).
    let manifest = "permissions:\n  terminal:\n    enabled: true\n    tmux: off\n";
    std::fs::write(data.join("citadel.yaml"), manifest).unwrap();
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
    let base = format!("ws://127.0.0.1:{port}/terminal");
    let mut c = Client::connect(&format!("{base}?token={alice}")).await;
    c.type_line("echo $((40+2))").await;
    c.read_until(0, b"42", Duration::from_secs(20)).await;
    assert_eq!(
        c.run("env | grep -c CITADEL || true").await,
        "0",
        "no citadel variable in the shell"
    );
    // The control plane serves this node its own organization's hashes only.
    let (status, _) = super::refused(&format!("{base}?token={stranger}"), &[]).await;
    assert_eq!(status, 401);
    assert!(!worker.logs().contains(&alice), "a token was logged");
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
