//! The console's HTTP rules, checked on the wire against the real control plane.

use serde_json::json;

use super::*;
use crate::support::plane::{raw, Plane};

fn plane() -> (tempfile::TempDir, Plane) {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    (tmp, p)
}

fn state(p: &Plane, id: &str) -> String {
    p.json("GET", &format!("/api/v1/jobs/{id}"), None)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn pages_without_a_session_redirect_to_the_login_page() {
    let (_t, p) = plane();
    for path in [
        "/ui",
        "/ui/",
        "/ui/jobs",
        "/ui/jobs/x",
        "/ui/jobs/x/events",
        "/ui/dlq",
        "/ui/nodes",
    ] {
        for cookie in [None, Some("citadel_console=not-a-session")] {
            let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("Cookie", *c)).collect();
            let r = raw(p.port, "GET", path, &headers, None);
            assert_eq!(r.status, 303, "{path}: {}", r.body);
            assert_eq!(r.header("location"), Some("/ui/login"), "{path}");
        }
    }
    let login = raw(p.port, "GET", "/ui/login", &[], None);
    assert_eq!(login.status, 200);
    assert!(login.body.contains("name=\"token\""), "{}", login.body);
}

#[test]
fn a_wrong_token_is_refused_and_the_right_one_gets_a_strict_cookie() {
    let (_t, p) = plane();
    let r = post_form(&p, "/ui/login", None, Some(SAME_ORIGIN), "token=wrong");
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    assert!(
        !r.body.contains("wrong"),
        "the typed token is not echoed: {}",
        r.body
    );

    let r = post_form(
        &p,
        "/ui/login",
        None,
        Some(SAME_ORIGIN),
        &format!("token={}", p.token),
    );
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui/"));
    let cookie = r.header("set-cookie").unwrap();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.split("; ").any(|f| f == flag), "{flag} in {cookie}");
    }
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    assert!(
        !cookie.contains(&p.token),
        "the cookie is a session id, not the token"
    );
    let id = cookie
        .split(';')
        .next()
        .unwrap()
        .trim_start_matches("citadel_console=");
    let page = get(&p, "/ui/", id);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Jobs by state"));
    assert!(!page.body.contains(&p.token), "no token in a page");

    // Behind a TLS proxy the cookie is Secure.
    let body = format!("token={}", p.token);
    let tls = raw(
        p.port,
        "POST",
        "/ui/login",
        &[
            ("Content-Type", "application/x-www-form-urlencoded"),
            ("Origin", SAME_ORIGIN),
            ("X-Forwarded-Proto", "https"),
        ],
        Some(&body),
    );
    assert!(tls.header("set-cookie").unwrap().contains("; Secure"));

    // Logging out ends the session.
    let out = post_form(&p, "/ui/logout", Some(id), Some(SAME_ORIGIN), "");
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(get(&p, "/ui/", id).status, 303);
    let log = std::fs::read_to_string(p.dir.with_extension(format!("{}.log", p.port))).unwrap();
    assert!(!log.contains(&p.token), "the token never reaches the log");
}

#[test]
fn every_answer_carries_the_content_security_policy() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    let job = p.submit(json!({"type": "echo"}));
    let answers = [
        raw(p.port, "GET", "/ui/login", &[], None),
        raw(p.port, "GET", "/ui/jobs", &[], None),
        raw(p.port, "GET", "/ui/assets/app.css", &[], None),
        get(&p, "/ui/", &id),
        get(&p, "/ui/jobs", &id),
        get(&p, &format!("/ui/jobs/{job}"), &id),
        get(&p, "/ui/nodes", &id),
        get(&p, "/ui/dlq", &id),
        post_form(&p, "/ui/logout", Some(&id), None, ""),
    ];
    for r in answers {
        let csp = r.header("content-security-policy").unwrap_or("");
        assert!(
            csp.starts_with("default-src 'self'"),
            "{} {csp:?}",
            r.status
        );
    }
}

#[test]
fn a_state_changing_request_from_a_foreign_or_missing_origin_is_forbidden() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    let job = p.submit(json!({"type": "echo"}));
    let cancel = format!("/ui/jobs/{job}/cancel");
    for origin in [
        None,
        Some("http://evil.example"),
        Some("null"),
        Some("http://127.0.0.1.evil"),
    ] {
        let r = post_form(&p, &cancel, Some(&id), origin, "");
        assert_eq!(r.status, 403, "{origin:?}");
        assert_eq!(state(&p, &job), "queued", "{origin:?} changed nothing");
    }
    let r = post_form(
        &p,
        "/ui/login",
        None,
        Some("http://evil.example"),
        &format!("token={}", p.token),
    );
    assert_eq!(r.status, 403, "login too");
    let r = post_form(&p, &cancel, Some(&id), Some(SAME_ORIGIN), "");
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("/ui/jobs/{job}").as_str())
    );
    assert_eq!(state(&p, &job), "cancelled");
}

#[test]
fn markup_in_a_job_comes_back_escaped() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    let evil = "<script>alert(1)</script>";
    let job = p.submit(
        json!({"type": evil, "payload": {"note": evil, "q": "\"><img src=x onerror=alert(2)>"}}),
    );
    for path in [
        "/ui/jobs".to_string(),
        format!("/ui/jobs/{job}"),
        format!("/ui/jobs?type={}", "%3Cscript%3E"),
    ] {
        let r = get(&p, &path, &id);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.body.contains("<script>alert"), "{path}: {}", r.body);
        assert!(!r.body.contains("<img src=x"), "{path}");
    }
    let page = get(&p, &format!("/ui/jobs/{job}"), &id).body;
    assert!(
        page.contains("alert(1)") && page.contains("&lt;script&gt;")
            || page.contains("&#60;script&#62;"),
        "{page}"
    );
}

/// The ids of the jobs a list page shows.
fn ids(body: &str) -> Vec<String> {
    body.split("data-id=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap().to_string())
        .collect()
}

#[test]
fn filters_return_only_matching_jobs() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    for i in 0..3 {
        p.submit(json!({"id": format!("a{i}"), "type": "alpha", "payload": {"n": i}}));
        p.submit(json!({"id": format!("b{i}"), "type": "beta", "payload": {"text": format!("needle-{i}")}}));
    }
    p.json("POST", "/api/v1/jobs/a1/cancel", None);
    let list = |q: &str| {
        let mut v = ids(&get(&p, &format!("/ui/jobs?{q}"), &id).body);
        v.sort();
        v
    };
    assert_eq!(list(""), ["a0", "a1", "a2", "b0", "b1", "b2"]);
    assert_eq!(list("type=alpha"), ["a0", "a1", "a2"]);
    assert_eq!(list("state=cancelled"), ["a1"]);
    assert_eq!(list("state=queued&type=alpha"), ["a0", "a2"]);
    assert_eq!(list("q=needle-2"), ["b2"]);
    assert_eq!(list("q=a2"), ["a2"]);
    assert_eq!(list("since=1h&type=beta"), ["b0", "b1", "b2"]);
    assert!(list("node=nobody").is_empty());
    // Newest first, and the filter stays in the page links.
    assert_eq!(ids(&get(&p, "/ui/jobs", &id).body)[0], "b2");
    assert_eq!(get(&p, "/ui/jobs?state=nope", &id).status, 200);
}

#[test]
fn pages_of_fifty_link_to_the_next_with_the_filter() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    for i in 0..55 {
        p.submit(json!({"id": format!("j{i:02}"), "type": "t"}));
    }
    let first = get(&p, "/ui/jobs?type=t", &id).body;
    assert_eq!(ids(&first).len(), 50);
    let next = first.split("id=\"next\"").next().unwrap();
    let href = next.rsplit("href=\"").next().unwrap();
    assert!(
        href.starts_with("/ui/jobs?type=t&#38;page=1\"")
            || href.starts_with("/ui/jobs?type=t&amp;page=1\""),
        "{href}"
    );
    let second = ids(&get(&p, "/ui/jobs?type=t&page=1", &id).body);
    assert_eq!(second, ["j04", "j03", "j02", "j01", "j00"]);
}

#[test]
fn the_event_stream_accepts_the_session() {
    let (_t, p) = plane();
    let id = login(&p, &p.token);
    let job = p.submit(json!({"type": "echo"}));
    p.json("POST", &format!("/api/v1/jobs/{job}/cancel"), None);
    let r = get(&p, &format!("/ui/jobs/{job}/events"), &id);
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("text/event-stream"));
    assert!(r.body.contains("event: cancelled"), "{}", r.body);
}

#[test]
fn assets_answer_304_to_their_etag() {
    let (_t, p) = plane();
    for name in ["app.js", "app.css"] {
        let path = format!("/ui/assets/{name}");
        let r = raw(p.port, "GET", &path, &[], None);
        assert_eq!(r.status, 200);
        assert!(!r.body.is_empty());
        let etag = r.header("etag").unwrap().to_string();
        let again = raw(p.port, "GET", &path, &[("If-None-Match", &etag)], None);
        assert_eq!(again.status, 304, "{name}");
        assert!(again.body.is_empty());
        let other = raw(
            p.port,
            "GET",
            &path,
            &[("If-None-Match", "\"other\"")],
            None,
        );
        assert_eq!(other.status, 200);
    }
    let js = raw(p.port, "GET", "/ui/assets/app.js", &[], None).body;
    assert!(
        !js.contains("http://") && !js.contains("https://"),
        "no third-party script"
    );
}

#[test]
fn a_read_only_session_sees_everything_and_changes_nothing() {
    let (_t, p) = plane();
    assert_eq!(
        raw(p.port, "POST", "/api/v1/console/tokens", &[], Some("{}")).status,
        401
    );
    let ro = login(&p, &console_token(&p));
    let admin = login(&p, &p.token);
    let job = p.submit(json!({"type": "sleep", "payload": {"ms": 1}, "maxAttempts": 1}));
    let claimed = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w", "lease_ms": 1})),
    );
    assert_eq!(claimed["jobs"].as_array().unwrap().len(), 1);
    crate::support::plane::eventually(
        std::time::Duration::from_secs(10),
        "the job is dead-lettered",
        || state(&p, &job) == "dead",
    );
    let queued = p.submit(json!({"type": "echo"}));

    let page = get(&p, &format!("/ui/jobs/{queued}"), &ro);
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("id=\"cancel\""), "no cancel button");
    assert!(get(&p, &format!("/ui/jobs/{queued}"), &admin)
        .body
        .contains("id=\"cancel\""));
    assert!(
        get(&p, "/ui/dlq", &ro).body.contains(&job),
        "it sees the dead letter"
    );
    assert!(!get(&p, "/ui/dlq", &ro).body.contains("class=\"requeue\""));

    for (path, body) in [
        (format!("/ui/jobs/{queued}/cancel"), ""),
        (format!("/ui/dlq/{job}/requeue"), ""),
        (format!("/ui/dlq/{job}/purge"), ""),
        ("/ui/dlq/purge".to_string(), "q="),
        ("/ui/jobs".to_string(), "type=echo&payload=%7B%7D"),
    ] {
        let r = post_form(&p, &path, Some(&ro), Some(SAME_ORIGIN), body);
        assert_eq!(r.status, 403, "{path}");
    }
    assert_eq!(state(&p, &queued), "queued");
    assert_eq!(state(&p, &job), "dead");
    // The admin's requeue goes through.
    let r = post_form(
        &p,
        &format!("/ui/dlq/{job}/requeue"),
        Some(&admin),
        Some(SAME_ORIGIN),
        "",
    );
    assert_eq!(r.status, 303);
    assert_eq!(state(&p, &job), "queued");
}

#[test]
fn purging_all_matching_dead_letters_confirms_the_count_first() {
    let (_t, p) = plane();
    let admin = login(&p, &p.token);
    for i in 0..3 {
        let ty = if i == 2 { "keep" } else { "drop" };
        p.submit(json!({"id": format!("d{i}"), "type": ty, "maxAttempts": 1}));
    }
    let got = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w", "max": 3, "lease_ms": 1})),
    );
    assert_eq!(got["jobs"].as_array().unwrap().len(), 3);
    crate::support::plane::eventually(std::time::Duration::from_secs(10), "dead-lettered", || {
        (0..3).all(|i| state(&p, &format!("d{i}")) == "dead")
    });
    let confirm = get(&p, "/ui/dlq/purge?type=drop", &admin);
    assert!(confirm.body.contains("<b>2</b>"), "{}", confirm.body);
    assert_eq!(
        state(&p, "d0"),
        "dead",
        "the confirmation page removes nothing"
    );
    let r = post_form(
        &p,
        "/ui/dlq/purge",
        Some(&admin),
        Some(SAME_ORIGIN),
        "type=drop&q=&node=&since=",
    );
    assert_eq!(r.status, 303);
    assert_eq!(p.call("GET", "/api/v1/jobs/d0", None).status, 404);
    assert_eq!(p.call("GET", "/api/v1/jobs/d1", None).status, 404);
    assert_eq!(state(&p, "d2"), "dead");
}
