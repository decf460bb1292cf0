//! `citadel terminal` end to end, every part real: a `citadel nexus serve` issues the token, a
//! node enrolled there in organization `acme` runs `citadel work` with the console enabled and
//! reads the token hashes from it, and `citadel terminal` types into the shell: with stdin piped,
//! and on a terminal of its own (a PTY: raw mode, the window's size, the detach key).

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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

/// A control plane, a node of `acme` enrolled there running `citadel work` with the console on,
/// and a token for alice: what the tests need, kept alive by the returned guards.
/// (Fields drop in order: the processes end before their folder goes.)
struct Node {
    worker: Worker,
    _plane: Plane,
    listen: String,
    token: String,
    tmp: tempfile::TempDir,
}

fn node_with_a_token() -> Node {
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
    let token = made["token"].as_str().unwrap().to_string();
    Node {
        worker,
        _plane: p,
        listen,
        token,
        tmp,
    }
}

#[test]
fn citadel_terminal_runs_a_shell_on_a_node_with_a_token_from_its_control_plane() {
    let n = node_with_a_token();
    let (tmp, listen, token, worker) = (&n.tmp, &n.listen, n.token.as_str(), &n.worker);

    let out = terminal(
        tmp.path(),
        &[listen, "--token", token],
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
    let out = terminal(tmp.path(), &[listen, "--token", &wrong], "echo hi\n");
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

/// Reads a PTY into a shared buffer.
fn collect(mut r: Box<dyn std::io::Read + Send>) -> Arc<Mutex<Vec<u8>>> {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let b = buf.clone();
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n) = r.read(&mut chunk) {
            if n == 0 {
                break;
            }
            b.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn wait_for(buf: &Mutex<Vec<u8>>, what: &str) {
    let started = Instant::now();
    while !text(&buf.lock().unwrap()).contains(what) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no {what:?} on the terminal: {:?}",
            text(&buf.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn on_a_terminal_it_is_raw_follows_the_window_and_detaches_with_ctrl_bracket() {
    use portable_pty::{CommandBuilder, PtySize};
    let n = node_with_a_token();
    let size = |cols, rows| PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    };
    let pair = portable_pty::native_pty_system()
        .openpty(size(91, 33))
        .unwrap();
    let mut cmd = CommandBuilder::new(BIN);
    cmd.args([
        "--data-dir",
        n.tmp.path().to_str().unwrap(),
        "terminal",
        &n.listen,
    ]);
    cmd.env("CITADEL_TERMINAL_TOKEN", &n.token);
    let mut child = pair.slave.spawn_command(cmd).unwrap();
    drop(pair.slave);
    let out = collect(pair.master.try_clone_reader().unwrap());
    let mut keys = pair.master.take_writer().unwrap();
    wait_for(&out, "detach with ^]");

    // The remote window starts at the local one's size, and follows it (SIGWINCH → resize).
    keys.write_all(b"stty size\r").unwrap();
    wait_for(&out, "33 91");
    pair.master.resize(size(120, 40)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    keys.write_all(b"stty size\r").unwrap();
    wait_for(&out, "40 120");
    // Raw mode: Ctrl-C reaches the remote shell (interrupting `sleep`) instead of ending citadel.
    keys.write_all(b"sleep 30\r").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    keys.write_all(&[0x03]).unwrap();
    keys.write_all(b"echo $((6*7))x\r").unwrap();
    wait_for(&out, "42x");
    // Ctrl-] detaches: exit 0, and the local terminal is told.
    keys.write_all(&[0x1d]).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the detach key did not end the session: {:?}",
            text(&out.lock().unwrap())
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    wait_for(&out, "detached from");
    assert!(
        !text(&out.lock().unwrap()).contains(&n.token),
        "the token was printed"
    );
}
