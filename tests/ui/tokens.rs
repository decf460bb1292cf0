//! Console tokens listed and revoked, the sessions they opened ended with them, the tokens page
//! kept to the admin, and sessions kept across a restart of the real control plane.

use serde_json::{json, Value};

use super::*;
use crate::support::plane::{raw, Plane};

fn plane() -> (tempfile::TempDir, Plane) {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    (tmp, p)
}

/// A console token for `name` (`extra` merged into the request): its id and plain token.
fn mint(p: &Plane, name: &str, extra: Value) -> (String, String) {
    let mut body = json!({ "name": name });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let v = p.json("POST", "/api/v1/console/tokens", Some(body));
    let id = v["id"].as_str().unwrap().to_string();
    (id, v["token"].as_str().unwrap().to_string())
}

fn listed(p: &Plane) -> Vec<Value> {
    p.json("GET", "/api/v1/console/tokens", None)["tokens"]
        .as_array()
        .unwrap()
        .clone()
}

/// Whether `cookie` still opens the console (200), or is sent to the login page (303).
fn opens(p: &Plane, cookie: &str) -> bool {
    let r = get(p, "/ui/", cookie);
    match r.status {
        200 => true,
        303 => {
            assert_eq!(r.header("location"), Some("/ui/login"));
            false
        }
        s => panic!("unexpected {s}: {}", r.body),
    }
}

#[test]
fn console_tokens_are_listed_and_revoked_and_their_sessions_end_at_once() {
    let (_t, p) = plane();
    let (id, token) = mint(&p, "viewer", json!({}));
    let (_, other) = mint(&p, "auditor", json!({ "expires_in_s": 3600 }));
    let list = listed(&p);
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], json!(id));
    assert_eq!(list[0]["name"], json!("viewer"));
    assert_eq!(list[0]["state"], json!("active"));
    assert!(list[0]["created_at"].is_string() && list[0]["expires_at"].is_null());
    assert!(list[1]["expires_at"].is_string());
    let text = serde_json::to_string(&list).unwrap();
    for secret in [&token, &other] {
        assert!(!text.contains(secret.as_str()), "no token in the list");
    }
    assert!(!text.contains("hash"), "no hash in the list: {text}");

    let session = login(&p, &token);
    let kept = login(&p, &other);
    assert!(opens(&p, &session));
    let v = p.json("POST", &format!("/api/v1/console/tokens/{id}/revoke"), None);
    assert_eq!(v["state"], json!("revoked"));
    assert!(!opens(&p, &session), "the revoked token's session ended");
    assert!(opens(&p, &kept), "another token's session goes on");
    let again = post_form(
        &p,
        "/ui/login",
        None,
        Some(SAME_ORIGIN),
        &format!("token={token}"),
    );
    assert_eq!(again.status, 401, "a revoked token no longer signs in");
    let first = listed(&p)[0]["revoked_at"].clone();
    let twice = p.json("POST", &format!("/api/v1/console/tokens/{id}/revoke"), None);
    assert_eq!(
        twice["revoked_at"], first,
        "revoking twice keeps the first time"
    );

    assert_eq!(
        p.call("POST", "/api/v1/console/tokens/ct-none/revoke", None)
            .status,
        404
    );
    for (method, path) in [
        ("GET", "/api/v1/console/tokens".to_string()),
        ("POST", format!("/api/v1/console/tokens/{id}/revoke")),
    ] {
        assert_eq!(raw(p.port, method, &path, &[], None).status, 401, "{path}");
        let bearer = format!("Bearer {other}");
        let r = raw(p.port, method, &path, &[("Authorization", &bearer)], None);
        assert_eq!(
            r.status, 401,
            "a console token is no API credential: {path}"
        );
    }
    let log = std::fs::read_to_string(p.dir.with_extension(format!("{}.log", p.port))).unwrap();
    assert!(
        !log.contains(&token) && !log.contains(&session),
        "no secret in the log"
    );
}

#[test]
fn the_tokens_page_is_the_admins_and_read_only_sessions_are_refused_every_action() {
    let (_t, p) = plane();
    let (id, token) = mint(&p, "viewer", json!({}));
    let viewer = login(&p, &token);
    assert_eq!(get(&p, "/ui/tokens", &viewer).status, 403);
    let revoke = format!("/ui/tokens/{id}/revoke");
    let job = p.submit(json!({"type": "echo"}));
    for (path, body) in [
        ("/ui/tokens", "name=mallory"),
        (revoke.as_str(), ""),
        ("/ui/jobs", "type=echo"),
        (&format!("/ui/jobs/{job}/cancel"), ""),
        ("/ui/dlq/purge", ""),
    ] {
        let r = post_form(&p, path, Some(&viewer), Some(SAME_ORIGIN), body);
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(listed(&p).len(), 1, "no token was created");
    assert!(opens(&p, &viewer), "nor revoked");
    let out = post_form(&p, "/ui/logout", Some(&viewer), Some(SAME_ORIGIN), "");
    assert_eq!(out.status, 303, "a read-only session may still log out");

    let admin = login(&p, &p.token);
    let page = get(&p, "/ui/tokens", &admin);
    assert_eq!(page.status, 200);
    assert!(
        page.body.contains(&id) && page.body.contains("viewer"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(&token), "the list shows no token");
    let foreign = post_form(
        &p,
        "/ui/tokens",
        Some(&admin),
        Some("http://evil.example"),
        "name=x",
    );
    assert_eq!(foreign.status, 403);

    let made = post_form(
        &p,
        "/ui/tokens",
        Some(&admin),
        Some(SAME_ORIGIN),
        "name=bob&days=2",
    );
    assert_eq!(made.status, 200, "{}", made.body);
    let list = listed(&p);
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["name"], json!("bob"));
    assert!(list[1]["expires_at"].is_string());
    let shown = made
        .body
        .split("<code>")
        .nth(1)
        .and_then(|s| s.split("</code>").next())
        .expect("the new token shown once");
    let bob = login(&p, shown);
    assert!(opens(&p, &bob));
    assert!(
        !get(&p, "/ui/tokens", &admin).body.contains(shown),
        "shown once"
    );

    let bad = post_form(
        &p,
        "/ui/tokens",
        Some(&admin),
        Some(SAME_ORIGIN),
        "name=x&days=soon",
    );
    assert_eq!(bad.status, 400);

    let bob_id = list[1]["id"].as_str().unwrap();
    let r = post_form(
        &p,
        &format!("/ui/tokens/{bob_id}/revoke"),
        Some(&admin),
        Some(SAME_ORIGIN),
        "",
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui/tokens"));
    assert_eq!(listed(&p)[1]["state"], json!("revoked"));
    assert!(
        !opens(&p, &bob),
        "the page's revocation ended bob's session"
    );
}

#[test]
fn sessions_survive_a_restart_but_not_their_tokens_revocation_or_expiry() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let (_, token) = mint(&p, "viewer", json!({}));
    let (gone, doomed) = mint(&p, "leaving", json!({}));
    let (_, brief) = mint(&p, "brief", json!({ "expires_in_s": 2 }));
    let admin = login(&p, &p.token);
    let viewer = login(&p, &token);
    let revoked = login(&p, &doomed);
    let expiring = login(&p, &brief);
    let ended = login(&p, &p.token);
    assert_eq!(
        post_form(&p, "/ui/logout", Some(&ended), Some(SAME_ORIGIN), "").status,
        303
    );
    p.json(
        "POST",
        &format!("/api/v1/console/tokens/{gone}/revoke"),
        None,
    );

    let port = p.port;
    p.kill9();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let p = Plane::start_on(&dir, port);
    assert!(
        opens(&p, &admin),
        "the admin's session survived the restart"
    );
    assert!(
        opens(&p, &viewer),
        "the read-only session survived the restart"
    );
    let r = post_form(
        &p,
        "/ui/jobs",
        Some(&viewer),
        Some(SAME_ORIGIN),
        "type=echo",
    );
    assert_eq!(r.status, 403, "still read-only after the restart");
    assert!(
        !opens(&p, &revoked),
        "a revoked token's session stays ended"
    );
    assert!(!opens(&p, &expiring), "an expired token's session is over");
    assert!(!opens(&p, &ended), "a logged-out session stays ended");
    assert!(!opens(&p, "not-a-session"));
}

/// Runs `citadel console tokens ARGS` as the admin: success and stdout.
fn tokens_cli(p: &Plane, data: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = crate::support::plane::citadel(data)
        .args(["console", "tokens"])
        .args(args)
        .args(["--nexus", &p.url(), "--token", &p.token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        out.status.success(),
        text + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn the_cli_creates_lists_and_revokes_console_tokens() {
    let (t, p) = plane();
    let (ok, out) = tokens_cli(
        &p,
        t.path(),
        &["create", "--name", "carol", "--expires", "1d", "--json"],
    );
    assert!(ok, "{out}");
    let made: Value = serde_json::from_str(&out).unwrap();
    let (id, token) = (
        made["id"].as_str().unwrap(),
        made["token"].as_str().unwrap(),
    );
    assert!(made["expires_at"].is_string(), "{made}");
    let session = login(&p, token);
    let (ok, out) = tokens_cli(&p, t.path(), &["ls"]);
    assert!(
        ok && out.contains(id) && out.contains("carol") && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(token), "ls never prints a token: {out}");
    let (ok, out) = tokens_cli(&p, t.path(), &["revoke", id]);
    assert!(ok && out.contains(id), "{out}");
    assert!(
        !opens(&p, &session),
        "the CLI's revocation ended the session"
    );
    let (ok, _) = tokens_cli(&p, t.path(), &["revoke", "ct-none"]);
    assert!(!ok, "an unknown id fails");
}
