//! Terminal tokens against a real `citadel nexus serve`: a token is shown once and only its
//! SHA-256 is served, to the nodes of its organization alone; a node credential cannot manage
//! tokens; revoked and expired tokens leave the hashes; all of it survives a kill -9 and restart.

use std::time::Duration;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use super::credentials::{as_node, enrol};
use crate::support::plane::*;

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `citadel terminal tokens ARGS` as the admin: success, stdout, stderr.
fn tokens_cli(p: &Plane, data: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = citadel(data)
        .args(["terminal", "tokens"])
        .args(args)
        .args(["--nexus", &p.url(), "--token", &p.token])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.success(), text(&out.stdout), text(&out.stderr))
}

/// Creates a token through the CLI; its JSON answer (with the plain token).
fn create(p: &Plane, data: &std::path::Path, args: &[&str]) -> Value {
    let mut all = vec!["create", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = tokens_cli(p, data, &all);
    assert!(ok, "{out}{err}");
    serde_json::from_str(&out).unwrap()
}

/// The hashes a caller reads for `org`: status and the listed hashes.
fn hashes(p: &Plane, bearer: &str, org: &str) -> (u16, Vec<Value>) {
    let r = as_node(
        p,
        bearer,
        "GET",
        &format!("/api/fabric/terminal/tokens/{org}/hashes"),
        None,
    );
    if r.status != 200 {
        return (r.status, Vec::new());
    }
    (r.status, r.json()["tokens"].as_array().unwrap().clone())
}

fn listed(list: &[Value], hash: &str) -> bool {
    list.iter().any(|t| t["hash"] == hash)
}

#[test]
fn a_token_is_shown_once_and_only_its_hash_reaches_its_organizations_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (_, acme) = enrol(&p, "gpu-acme", Some("acme"));
    let (beta_node, beta) = enrol(&p, "gpu-beta", Some("beta"));

    let made = create(&p, tmp.path(), &["--user", "alice", "--org", "acme"]);
    let token = made["token"].as_str().unwrap().to_string();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    assert_eq!(
        (made["user_id"].as_str(), made["org_id"].as_str()),
        (Some("alice"), Some("acme"))
    );
    assert!(made["expires_at"].is_null(), "{made}");
    let hash = sha256_hex(&token);
    let other = p.json(
        "POST",
        "/api/v1/terminal/tokens",
        Some(json!({"user_id": "bob", "org_id": "beta"})),
    );
    let other_hash = sha256_hex(other["token"].as_str().unwrap());

    // The list never shows a token or its hash again, through the API or the CLI.
    let list = p.call("GET", "/api/v1/terminal/tokens", None);
    assert_eq!(list.status, 200, "{}", list.body);
    assert!(
        !list.body.contains(&token) && !list.body.contains(&hash),
        "{}",
        list.body
    );
    assert_eq!(list.json()["tokens"].as_array().unwrap().len(), 2);
    let (ok, out, err) = tokens_cli(&p, tmp.path(), &["ls"]);
    assert!(
        ok && out.contains("alice") && out.contains("active"),
        "{out}{err}"
    );
    assert!(!out.contains(&token) && !out.contains(&hash), "{out}");

    // A node of acme reads acme's hashes, the SHA-256 of the token; beta's node beta's alone.
    let (status, got) = hashes(&p, &acme, "acme");
    assert_eq!(status, 200);
    assert_eq!(
        got,
        vec![json!({"hash": hash, "user_id": "alice", "org_id": "acme", "expires_at": null})]
    );
    let (_, got) = hashes(&p, &beta, "beta");
    assert!(listed(&got, &other_hash) && !listed(&got, &hash), "{got:?}");
    // Another organization's hashes: 403 for a node, served to the admin token.
    let r = as_node(
        &p,
        &beta,
        "GET",
        "/api/fabric/terminal/tokens/acme/hashes",
        None,
    );
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains(&beta_node) && r.body.contains("acme"),
        "{}",
        r.body
    );
    assert!(listed(&hashes(&p, &p.token, "acme").1, &hash));
    assert_eq!(hashes(&p, "not-a-credential", "acme").0, 401);
    let r = raw(
        p.port,
        "GET",
        "/api/fabric/terminal/tokens/acme/hashes",
        &[],
        None,
    );
    assert_eq!(r.status, 401, "{}", r.body);

    // A node credential cannot create, list or revoke tokens.
    let id = made["id"].as_str().unwrap();
    for (method, path, body) in [
        (
            "POST",
            "/api/v1/terminal/tokens".to_string(),
            Some(json!({"user_id": "mallory", "org_id": "acme"})),
        ),
        ("GET", "/api/v1/terminal/tokens".to_string(), None),
        ("POST", format!("/api/v1/terminal/tokens/{id}/revoke"), None),
    ] {
        let r = as_node(&p, &acme, method, &path, body);
        assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
        assert!(
            r.json()["error"].as_str().unwrap().contains("admin token"),
            "{}",
            r.body
        );
    }
    assert_eq!(
        hashes(&p, &acme, "acme").1.len(),
        1,
        "no token was created by the node"
    );
    let bad = p.call(
        "POST",
        "/api/v1/terminal/tokens",
        Some(r#"{"user_id":"u","org_id":"Not Valid"}"#),
    );
    assert_eq!(bad.status, 400, "{}", bad.body);

    // Neither plain token reached the control plane's log.
    let log = std::fs::read_to_string(tmp.path().join(format!("plane.{}.log", p.port))).unwrap();
    assert!(log.contains("terminal token created"), "{log}");
    assert!(
        !log.contains(&token) && !log.contains(other["token"].as_str().unwrap()),
        "a token was logged"
    );
}

#[test]
fn revoked_and_expired_tokens_leave_the_hashes_also_after_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let (_, node) = enrol(&p, "gpu-a", Some("acme"));
    let kept = create(
        &p,
        tmp.path(),
        &["--user", "alice", "--org", "acme", "--expires", "30d"],
    );
    let revoked = create(&p, tmp.path(), &["--user", "bob", "--org", "acme"]);
    let expiring = create(
        &p,
        tmp.path(),
        &["--user", "carol", "--org", "acme", "--expires", "1s"],
    );
    let h = |v: &Value| sha256_hex(v["token"].as_str().unwrap());
    assert!(
        kept["expires_at"]
            .as_str()
            .is_some_and(|e| e.starts_with("20")),
        "{kept}"
    );

    let (ok, out, err) = tokens_cli(&p, tmp.path(), &["revoke", revoked["id"].as_str().unwrap()]);
    assert!(
        ok && out.contains("revoked") && out.contains("bob"),
        "{out}{err}"
    );
    let (_, got) = hashes(&p, &node, "acme");
    assert!(
        listed(&got, &h(&kept)) && !listed(&got, &h(&revoked)),
        "{got:?}"
    );
    eventually(
        Duration::from_secs(10),
        "the expired token leaves the hashes",
        || !listed(&hashes(&p, &node, "acme").1, &h(&expiring)),
    );
    let (ok, _, err) = tokens_cli(&p, tmp.path(), &["revoke", "tt-nosuchtoken"]);
    assert!(!ok && err.contains("404"), "{err}");

    // kill -9 and restart: every answered change was durable.
    let port = p.port;
    p.kill9();
    let p = Plane::start_on(&dir, port);
    let (_, got) = hashes(&p, &node, "acme");
    let only: Vec<&Value> = got.iter().map(|t| &t["hash"]).collect();
    assert_eq!(only, [&json!(h(&kept))], "{got:?}");
    let list = p.json("GET", "/api/v1/terminal/tokens?org=acme", None);
    let state = |id: &Value| {
        let t = list["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["id"] == *id)
            .unwrap();
        t["state"].as_str().unwrap().to_string()
    };
    assert_eq!(
        [
            state(&kept["id"]),
            state(&revoked["id"]),
            state(&expiring["id"])
        ],
        ["active", "revoked", "expired"]
    );
}
