//! Per-node credentials and organizations against a real `citadel nexus serve`: an approved node
//! gets its own credential, which works jobs but cannot administer (403); a revoked node is
//! refused at once, its WebSocket closed, also after a restart; a node never gets, sees or touches
//! another organization's job.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;

use crate::support::plane::*;

/// Enrols a node through device authorization (approved into `org`); its id and credential.
pub(super) fn enrol(p: &Plane, host: &str, org: Option<&str>) -> (String, String) {
    let post = |path: &str, body: Value| {
        let r = raw(p.port, "POST", path, &[], Some(&body.to_string()));
        (r.status, r.json())
    };
    let (status, start) = post(
        "/api/fabric/device-auth/start",
        json!({"client_id": "citadel", "hostname": host, "machine_id": format!("{host}-machine-id")}),
    );
    assert_eq!(status, 200, "{start}");
    let mut approve = json!({"user_code": start["user_code"]});
    if let Some(org) = org {
        approve["org"] = json!(org);
    }
    let approved = p.json("POST", "/api/v1/device-auth/approve", Some(approve));
    assert_eq!(approved["org"], org.unwrap_or("default"));
    let (status, creds) = post(
        "/api/fabric/device-auth/token",
        json!({"device_code": start["device_code"],
               "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}),
    );
    assert_eq!(status, 200, "{creds}");
    let token = creds["access_token"].as_str().unwrap().to_string();
    assert_ne!(token, p.token, "a node never receives the admin token");
    assert_eq!(creds["org"], org.unwrap_or("default"));
    (creds["node_id"].as_str().unwrap().to_string(), token)
}

/// A request with a node's credential.
pub(super) fn as_node(
    p: &Plane,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Resp {
    let auth = format!("Bearer {token}");
    let body = body.map(|b| b.to_string());
    raw(
        p.port,
        method,
        path,
        &[("Authorization", &auth)],
        body.as_deref(),
    )
}

/// Runs a `citadel` command: success, stdout, stderr.
fn cli(cmd: &mut std::process::Command) -> (bool, String, String) {
    let out = cmd.output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

fn claim(p: &Plane, token: &str, worker: &str) -> Vec<Value> {
    let r = as_node(
        p,
        token,
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": worker, "max": 10})),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["jobs"].as_array().unwrap().clone()
}

#[test]
fn a_node_credential_works_jobs_but_cannot_administer() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (node, token) = enrol(&p, "gpu-a", None);
    let id = p.submit(json!({"type": "echo", "payload": {"msg": "hi"}}));

    // What a worker does: claim, renew, post events, read its job, heartbeat, settle.
    let jobs = claim(&p, &token, "w-a");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["org"], "default");
    let lease = jobs[0]["lease"]["id"].as_str().unwrap().to_string();
    let lease_body = json!({ "lease_id": lease });
    let r = as_node(
        &p,
        &token,
        "POST",
        &format!("/api/v1/jobs/{id}/lease"),
        Some(lease_body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let end = json!({"type": "end", "jobId": id, "data": {"result": {"msg": "hi"}}});
    let r = as_node(
        &p,
        &token,
        "POST",
        &format!("/api/v1/jobs/{id}/events?lease_id={lease}"),
        Some(end),
    );
    assert_eq!(r.status, 204, "{}", r.body);
    let r = as_node(&p, &token, "GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(
        (r.status, r.json()["cancel_requested"].clone()),
        (200, json!(false))
    );
    let beat = json!({"id": node, "name": "gpu-a"});
    let r = as_node(&p, &token, "POST", "/api/v1/nodes/heartbeat", Some(beat));
    assert_eq!(r.status, 204, "{}", r.body);
    let settle = json!({"lease_id": lease, "action": "ack"});
    let r = as_node(
        &p,
        &token,
        "POST",
        &format!("/api/v1/jobs/{id}/settle"),
        Some(settle),
    );
    assert_eq!(
        (r.status, r.json()["state"].clone()),
        (200, json!("succeeded"))
    );

    // What only the admin token does: 403, saying why.
    let other = p.submit(json!({"type": "echo"}));
    let approve = json!({"user_code": "BCDF-GHJK"});
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/jobs".to_string(),
            Some(json!({"type": "echo"})),
        ),
        ("POST", format!("/api/v1/jobs/{other}/cancel"), None),
        (
            "POST",
            "/api/v1/device-auth/approve".to_string(),
            Some(approve),
        ),
        ("GET", "/api/v1/device-auth/pending".to_string(), None),
        ("GET", "/api/v1/jobs".to_string(), None),
        ("GET", "/api/v1/dlq".to_string(), None),
        ("POST", format!("/api/v1/dlq/{other}/requeue"), None),
        ("GET", "/api/v1/credentials".to_string(), None),
        ("POST", format!("/api/v1/credentials/{node}/revoke"), None),
    ] {
        let r = as_node(&p, &token, method, &path, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("admin token"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        p.json("GET", "/api/v1/jobs", None)["jobs"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        p.json("GET", &format!("/api/v1/jobs/{other}"), None)["state"],
        "queued"
    );
    // A forged credential for the same node is no credential at all.
    let forged = format!("{}0", &token[..token.len() - 1]);
    let forged = if forged == token {
        format!("{}1", &token[..token.len() - 1])
    } else {
        forged
    };
    assert_eq!(
        as_node(
            &p,
            &forged,
            "POST",
            "/api/v1/jobs/claim",
            Some(json!({"worker": "x"}))
        )
        .status,
        401
    );
    // Neither secret reached the control plane's log (it logs at debug here).
    let log = tmp.path().join(format!("plane.{}.log", p.port));
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("node credential issued"), "{log}");
    let secret = token.rsplit('.').next().unwrap();
    assert!(
        !log.contains(secret) && !log.contains(&p.token),
        "a secret was logged"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_node_is_refused_at_once_and_its_socket_closed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let (node, token) = enrol(&p, "gpu-r", Some("acme"));
    let (kept, kept_token) = enrol(&p, "gpu-k", Some("acme"));

    let mut req = format!("ws://127.0.0.1:{}/api/v1/ws", p.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    ws.send(Message::text(
        json!({"type": "hello", "worker": "w-r"}).to_string(),
    ))
    .await
    .unwrap();
    let welcome = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap();
    assert!(welcome
        .unwrap()
        .unwrap()
        .to_text()
        .unwrap()
        .contains("welcome"));

    let beat = || json!({"id": node});
    assert_eq!(
        as_node(&p, &token, "POST", "/api/v1/nodes/heartbeat", Some(beat())).status,
        204
    );
    let (ok, out, err) = cli(citadel(tmp.path()).args([
        "nodes",
        "revoke",
        &node,
        "--nexus",
        &p.url(),
        "--token",
        &p.token,
    ]));
    assert!(
        ok && out.contains("revoked") && out.contains("acme"),
        "{out}{err}"
    );

    // The very next request is refused, and the open socket is closed.
    let r = as_node(&p, &token, "POST", "/api/v1/nodes/heartbeat", Some(beat()));
    assert_eq!(r.status, 401, "{}", r.body);
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.reason.to_string()),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the revoked node's socket stayed open");
    assert!(
        closed.as_deref().is_none_or(|r| r.contains("revoked")),
        "{closed:?}"
    );

    // The other node of the organization is untouched; `nodes ls` shows both.
    assert_eq!(claim(&p, &kept_token, "w-k").len(), 0);
    let (ok, out, err) = cli(citadel(tmp.path()).args([
        "nodes",
        "ls",
        "--json",
        "--nexus",
        &p.url(),
        "--token",
        &p.token,
    ]));
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(&out).unwrap();
    let state = |id: &str| {
        let n = listed["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .unwrap();
        (
            n["org"].as_str().unwrap().to_string(),
            n["state"].as_str().unwrap().to_string(),
        )
    };
    assert_eq!(state(&node), ("acme".into(), "revoked".into()));
    assert_eq!(state(&kept), ("acme".into(), "active".into()));
    assert!(!out.contains(&token) && !out.contains(&kept_token[kept_token.len() - 64..]));

    // A restart remembers both: the revoked node stays refused, the other still works.
    let port = p.port;
    p.kill9();
    let p = Plane::start_on(&dir, port);
    assert_eq!(
        as_node(&p, &token, "GET", "/api/v1/health", None).status,
        401
    );
    assert_eq!(
        as_node(&p, &kept_token, "GET", "/api/v1/health", None).status,
        200
    );
}

#[test]
fn a_node_never_gets_sees_or_touches_another_organizations_job() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (_, acme) = enrol(&p, "gpu-acme", Some("acme"));
    let (_, beta) = enrol(&p, "gpu-beta", Some("beta"));
    let a = p.submit(json!({"type": "echo", "org": "acme"}));
    let d = p.submit(json!({"type": "echo"}));
    let b = p.submit(json!({"type": "echo", "org": "beta"}));
    assert_eq!(
        p.json("GET", &format!("/api/v1/jobs/{a}"), None)["org"],
        "acme"
    );

    let got = claim(&p, &beta, "w-b");
    let ids: Vec<&str> = got.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [b.as_str()], "beta's node gets beta's job only");
    let r = as_node(&p, &beta, "GET", "/api/v1/jobs/next", None);
    assert_eq!(r.status, 204, "{}", r.body);
    // Another organization's job is answered as if it did not exist, for every worker call.
    for (method, path, body) in [
        ("GET", format!("/api/v1/jobs/{a}"), None),
        (
            "POST",
            format!("/api/v1/jobs/{a}/events"),
            Some(json!({"type": "error", "jobId": a})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{a}/lease"),
            Some(json!({"lease_id": "x"})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{a}/settle"),
            Some(json!({"lease_id": "x", "action": "ack"})),
        ),
        (
            "POST",
            format!("/api/v1/jobs/{a}/status"),
            Some(json!({"status": "FAILURE"})),
        ),
    ] {
        let r = as_node(&p, &beta, method, &path, body);
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
    }
    // In a batch, likewise, operation by operation.
    let ops = json!({"ops": [
        {"op": "events", "job": a, "lease_id": "x", "events": [{"type": "error", "jobId": a}]},
        {"op": "settle", "job": a, "settle": {"lease_id": "x", "action": "ack"}},
    ]});
    let r = as_node(&p, &beta, "POST", "/api/v1/jobs/batch", Some(ops));
    assert_eq!(r.status, 200, "{}", r.body);
    let statuses: Vec<u64> = r.json()["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, [404, 404], "{}", r.body);
    let job_a = p.json("GET", &format!("/api/v1/jobs/{a}"), None);
    assert_eq!(
        (job_a["state"].as_str(), job_a["events"].as_u64()),
        (Some("queued"), Some(0))
    );

    let got = claim(&p, &acme, "w-a");
    let ids: Vec<&str> = got.iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.as_str()], "acme's node gets acme's job only");
    // The admin token works the `default` organization (the zero-config worker's).
    let got = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w-d", "max": 10})),
    );
    assert_eq!(got["jobs"][0]["id"], d.as_str());
    assert_eq!(got["jobs"].as_array().unwrap().len(), 1);
    let r = p.call(
        "POST",
        "/api/v1/jobs",
        Some(r#"{"type":"echo","org":"Not Valid"}"#),
    );
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn a_revoked_node_waiting_in_a_long_poll_gets_no_job() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (node, token) = enrol(&p, "gpu-w", None);
    let (port, t) = (p.port, token.clone());
    let poll = std::thread::spawn(move || {
        let auth = format!("Bearer {t}");
        let body = json!({"worker": "w-w", "wait_ms": 30000}).to_string();
        let headers = [("Authorization", auth.as_str())];
        raw(port, "POST", "/api/v1/jobs/claim", &headers, Some(&body))
    });
    // Give the claim time to be waiting (whether or not it is yet, the answer must be the same).
    std::thread::sleep(Duration::from_millis(500));
    p.json("POST", &format!("/api/v1/credentials/{node}/revoke"), None);
    let id = p.submit(json!({"type": "echo"}));
    let r = poll.join().unwrap();
    assert_eq!(r.status, 401, "the revoked node got: {}", r.body);
    let job = p.json("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(
        (job["state"].as_str(), job["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_socket_is_pushed_and_may_touch_only_its_organizations_jobs() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (_, beta) = enrol(&p, "gpu-beta", Some("beta"));
    let a = p.submit(json!({"type": "echo", "org": "acme"}));
    let b = p.submit(json!({"type": "echo", "org": "beta"}));

    let mut req = format!("ws://127.0.0.1:{}/api/v1/ws", p.port)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {beta}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut send = async |v: Value| ws.send(Message::text(v.to_string())).await.unwrap();
    send(json!({"type": "hello", "worker": "w-b"})).await;
    send(json!({"type": "credit", "credit": 10})).await;
    send(json!({"type": "event", "id": 7, "job": a, "event": {"type": "error", "jobId": a}})).await;
    send(json!({"type": "ping", "id": 8})).await;
    // Every frame up to the ping's answer: beta's job only, and the event on acme's job refused.
    let mut pushed = Vec::new();
    let mut refused = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
            .unwrap()
            .unwrap();
        let Message::Text(t) = msg else { continue };
        let f: Value = serde_json::from_str(&t).unwrap();
        match (f["type"].as_str().unwrap(), f["id"].as_u64()) {
            ("job", _) => pushed.push(f["job"]["id"].as_str().unwrap().to_string()),
            ("error", Some(7)) => refused = f["status"].as_u64(),
            ("ok", Some(8)) if !pushed.is_empty() => break,
            _ => {}
        }
    }
    assert_eq!(pushed, [b.as_str()]);
    assert_eq!(refused, Some(404));
    let job_a = p.json("GET", &format!("/api/v1/jobs/{a}"), None);
    assert_eq!(
        (job_a["state"].as_str(), job_a["events"].as_u64()),
        (Some("queued"), Some(0))
    );
}
