//! `citadel init` against a real control plane process, the device-authorization wire format,
//! the manifest's strictness and `citadel config show`.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Stdio};

use serde_json::{json, Value};

use super::cli::{citadel, mode, run};
use crate::support::plane::{raw, Plane};

/// Starts `citadel init --control-plane URL` and returns it with the user code it printed.
fn start_init(data: &std::path::Path, plane: &Plane, name: &str) -> (Child, String) {
    let mut child = citadel(data)
        .args(["init", "--control-plane", &plane.url(), "--name", name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let code = loop {
        let line = lines.next().expect("init printed no code").unwrap();
        if let Some(c) = line.trim().strip_prefix("code: ") {
            break c.to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    (child, code)
}

fn finish(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn init_joins_a_control_plane_once_approved_and_never_twice_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start_args(&tmp.path().join("plane"), &["--device-poll-interval", "1s"]);
    let data = tmp.path().join("node");
    let (child, code) = start_init(&data, &plane, "gpu-a");
    assert_eq!(code.len(), 9, "{code}");
    let pending = plane.json("GET", "/api/v1/device-auth/pending", None);
    assert_eq!(pending["pending"][0]["hostname"], "gpu-a");
    let (ok, out, err) = run(citadel(&data).args([
        "nexus",
        "approve",
        &code.to_lowercase(),
        "--org",
        "acme",
        "--nexus",
        &plane.url(),
        "--token",
        &plane.token,
    ]));
    assert!(
        ok && out.contains("approved") && out.contains("gpu-a"),
        "{out}{err}"
    );
    let (ok, err) = finish(child);
    assert!(ok, "{err}");

    let manifest = data.join("citadel.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(
        text.contains(&plane.url()) && !text.contains(&plane.token),
        "{text}"
    );
    // The node's own credential, never the control plane's admin token.
    let token = std::fs::read_to_string(data.join("node-token")).unwrap();
    assert!(
        token.trim() != plane.token && token.starts_with("cn1."),
        "the node received the admin token"
    );
    for f in ["citadel.yaml", "node-token", "identity.json"] {
        assert_eq!(mode(&data.join(f)), 0o600, "{f}");
    }
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("identity.json")).unwrap())
            .unwrap();
    let node_id = identity["node_id"].as_str().unwrap().to_string();
    // The organization it was approved into (the terminal service reads its tokens with it).
    assert_eq!(identity["org_id"], "acme", "{identity}");
    let nodes = plane.json("GET", "/api/v1/nodes", None);
    assert!(
        nodes
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["id"] == node_id.as_str() && n["name"] == "gpu-a"),
        "{nodes}"
    );
    // The worker reads the enrolment: `config show` names the control plane from the manifest.
    let (ok, out, _) = run(citadel(&data).args(["config", "show"]));
    assert!(ok && out.contains(&plane.url()), "{out}");

    // A second init refuses and leaves the identity alone.
    let (ok, _, err) = run(citadel(&data).args(["init", "--control-plane", &plane.url()]));
    assert!(!ok && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), text);
    let (ok, _, err) = run(citadel(&data).args(["init", "--offline"]));
    assert!(!ok && err.contains("already initialised"), "{err}");
    let (ok, _, err) = run(citadel(&data).args(["init", "--offline", "--force", "--name", "b"]));
    assert!(ok, "{err}");
    let identity: Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("identity.json")).unwrap())
            .unwrap();
    assert_eq!(
        identity["org_id"], "default",
        "the embedded control plane's organization"
    );
    assert!(std::fs::read_to_string(&manifest)
        .unwrap()
        .contains("\"b\""));
}

#[test]
fn denied_and_expired_codes_fail_init_with_a_clear_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start_args(
        &tmp.path().join("plane"),
        &["--device-poll-interval", "1s", "--device-code-ttl", "3s"],
    );
    let (denied, code) = start_init(&tmp.path().join("a"), &plane, "node-a");
    let (expired, _) = start_init(&tmp.path().join("b"), &plane, "node-b");
    let r = plane.json(
        "POST",
        "/api/v1/device-auth/approve",
        Some(json!({"user_code": code, "approve": false})),
    );
    assert_eq!(r["approved"], false);
    let (ok, err) = finish(denied);
    assert!(!ok && err.contains("denied"), "{err}");
    let (ok, err) = finish(expired);
    assert!(!ok && err.contains("expired"), "{err}");
    for d in ["a", "b"] {
        assert!(!tmp.path().join(d).join("citadel.yaml").exists());
        assert!(!tmp.path().join(d).join("node-token").exists());
    }
    // Approving an unknown or expired code is refused with the reason.
    let (ok, _, err) = run(citadel(&tmp.path().join("a")).args([
        "nexus",
        "approve",
        "BCDF-GHJK",
        "--nexus",
        &plane.url(),
        "--token",
        &plane.token,
    ]));
    assert!(
        !ok && err.contains("no pending device authorization"),
        "{err}"
    );
}

#[test]
fn the_device_endpoints_speak_rfc8628() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start_args(&tmp.path().join("plane"), &["--device-poll-interval", "2s"]);
    let post = |path: &str, body: Value| {
        let r = raw(
            plane.port,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            Some(&body.to_string()),
        );
        (r.status, r.json())
    };
    let (status, start) = post(
        "/api/fabric/device-auth/start",
        json!({"client_id": "go-agent", "client_version": "1.2", "hostname": "h1", "machine_id": "abcdef0123456789"}),
    );
    assert_eq!(status, 200);
    for k in [
        "device_code",
        "user_code",
        "verification_uri",
        "verification_uri_complete",
    ] {
        assert!(start[k].is_string(), "{k}: {start}");
    }
    assert_eq!(start["interval"], 2);
    assert_eq!(start["expires_in"], 600);
    let grant = "urn:ietf:params:oauth:grant-type:device_code";
    let poll = |code: &Value, grant: &str| {
        post(
            "/api/fabric/device-auth/token",
            json!({"device_code": code, "grant_type": grant}),
        )
    };
    assert_eq!(
        poll(&start["device_code"], grant),
        (400, json!({"error": "authorization_pending"}))
    );
    assert_eq!(
        poll(&start["device_code"], grant),
        (400, json!({"error": "slow_down"}))
    );
    assert_eq!(
        poll(&json!("nope"), grant),
        (400, json!({"error": "expired_token"}))
    );
    assert_eq!(
        poll(&start["device_code"], "password"),
        (400, json!({"error": "unsupported_grant_type"}))
    );
    // Malformed start bodies and approvals without the token are refused.
    assert_eq!(
        post("/api/fabric/device-auth/start", json!({"hostname": "h"})).0,
        400
    );
    let body = json!({"user_code": start["user_code"]}).to_string();
    assert_eq!(
        raw(
            plane.port,
            "POST",
            "/api/v1/device-auth/approve",
            &[],
            Some(&body)
        )
        .status,
        401
    );
    plane.json(
        "POST",
        "/api/v1/device-auth/approve",
        Some(json!({"user_code": start["user_code"]})),
    );
    let (status, creds) = poll(&start["device_code"], grant);
    assert_eq!(status, 200, "{creds}");
    assert_eq!(creds["token_type"], "Bearer");
    let token = creds["access_token"].as_str().unwrap();
    assert!(
        token != plane.token && token.starts_with("cn1.node-h1-abcdef01."),
        "{creds}"
    );
    assert_eq!(creds["node_id"], "node-h1-abcdef01");
    assert_eq!(creds["org"], "default");
    assert_eq!(
        poll(&start["device_code"], grant).1["error"],
        "expired_token",
        "answered once"
    );
    let page = raw(plane.port, "GET", "/device?code=X", &[], None);
    assert!(page.status == 200 && page.body.contains("Approve a node"));
}

#[test]
fn offline_init_config_show_layers_and_a_malformed_manifest_names_line_and_field() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("n");
    let (ok, out, err) =
        run(citadel(&data).args(["init", "--offline", "--name", "box", "--tag", "a100,lab"]));
    assert!(ok, "{out}{err}");
    let manifest = data.join("citadel.yaml");
    assert_eq!(mode(&manifest), 0o600);
    let (ok, out, _) = run(citadel(&data)
        .args(["config", "show", "--json"])
        .env("CITADEL_MAX_ATTEMPTS", "9"));
    assert!(ok);
    let rows: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let row = |k: &str| rows.iter().find(|r| r["key"] == k).unwrap().clone();
    assert_eq!(row("node.name")["source"], "manifest");
    assert_eq!(row("node.tags")["value"], "a100,lab");
    assert_eq!(
        row("worker.max_attempts"),
        json!({"key": "worker.max_attempts", "value": "9", "source": "env CITADEL_MAX_ATTEMPTS"})
    );
    assert_eq!(row("worker.default_timeout")["source"], "default");

    std::fs::write(
        &manifest,
        "node:\n  name: x\nworker:\n  concurrency: 2\n  drian_timeout: 3s\n",
    )
    .unwrap();
    let (ok, _, err) = run(citadel(&data).args(["config", "show"]));
    assert!(
        !ok && err.contains("drian_timeout") && err.contains("line 5"),
        "{err}"
    );
    std::fs::write(&manifest, "services:\n  - name: ollama\n  - name: tgi\n").unwrap();
    let (ok, _, err) = run(citadel(&data).args(["services", "ls"]));
    assert!(
        !ok && err.contains("unknown service \"tgi\"") && err.contains("line 3"),
        "{err}"
    );
    std::fs::write(&manifest, "node: [unclosed\n").unwrap();
    let (ok, _, err) = run(citadel(&data).args(["up", "--no-work"]));
    assert!(!ok && err.contains("line"), "{err}");
    let (ok, _, err) = run(citadel(&tmp.path().join("empty")).args(["up", "--no-work"]));
    assert!(!ok && err.contains("citadel init"), "{err}");
}
