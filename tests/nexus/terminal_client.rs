//! `citadel terminal` end to end, every part real: a `citadel nexus serve` issues the token, a
//! node enrolled there in organization `acme` runs `citadel work` with the console enabled and
//! reads the token hashes from it, and `citadel terminal` with stdin piped types into the shell.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::credentials::enrol;
use crate::support::plane::*;
use crate::support::worker::Worker;

/// Runs `citadel terminal ARGS` with `input` on stdin; killed after 60 s.
fn terminal(data: &std::path::Path, args: &[&str], input: &str) -> Output {
    let mut child = citadel(data)
        .arg("terminal")
        .args(args)
        .env_remove("CITADEL_TERMINAL_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
            panic!("citadel terminal did not end within 60 s");
        })
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn citadel_terminal_runs_a_shell_on_a_node_with_a_token_from_its_control_plane() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (node_id, credential) = enrol(&p, "gpu-t", Some("acme"));
    let data = tmp.path().join("node");
    std::fs::create_dir_all(&data).unwrap();
    let identity = json!({"node_id": node_id, "node_name": "gpu-t", "org_id": "acme", "control_plane": p.url()});
    std::fs::write(data.join("identity.json"), identity.to_string()).unwrap();
    let token_file = data.join("node-token");
    std::fs::write(&token_file, format!("{credential}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        data.join("citadel.yaml"),
        "permissions:\n  console:\n    enabled: true\n    tmux: off\n",
    )
    .unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let worker = Worker::start_on(&[], &data, &["--terminal-listen", &listen]);
    eventually(Duration::from_secs(60), "the terminal listening", || {
        worker.logs().contains("citadel: terminal on")
    });

    let out = citadel(tmp.path())
        .args([
            "terminal", "tokens", "create", "--user", "alice", "--org", "acme", "--json",
        ])
        .args(["--nexus", &p.url(), "--token", &p.token])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = made["token"].as_str().unwrap();

    let out = terminal(
        tmp.path(),
        &[&listen, "--token", token],
        "echo $((40+2))\nexit\n",
    );
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "exit {:?}: {stdout}{stderr}",
        out.status
    );
    assert!(
        // The PTY's lines end in \r\n, and a prompt's escape sequences may end in \r.
        stdout.split(['\r', '\n']).any(|l| l.trim() == "42"),
        "no 42 in the shell's output: {stdout:?} {stderr}"
    );

    // A wrong token: refused with the node's 401 and its message, exit code non-zero.
    let wrong = "0".repeat(64);
    let out = terminal(tmp.path(), &[&listen, "--token", &wrong], "echo hi\n");
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "a wrong token was let in: {}",
        text(&out.stdout)
    );
    assert!(stderr.contains("refused the terminal: 401"), "{stderr}");
    assert!(!stderr.contains(&wrong), "the token was printed: {stderr}");
    assert!(!worker.logs().contains(token), "a token was logged");
}
