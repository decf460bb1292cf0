//! The web console (docs/console.md) against the real `citadel nexus serve`: its HTTP rules
//! (`http.rs`: sessions, cookies, Origin, CSP, escaping, filters, ETags, the read-only role),
//! a real headless Chromium driven through WebDriver (`browser.rs`), the console tokens and
//! sessions kept across a restart (`tokens.rs`), and the node terminal page against real nodes on
//! the real mesh (`terminal.rs` on the wire, `terminal_browser.rs` in Chromium).

mod browser;
mod http;
mod terminal;
mod terminal_browser;
mod tokens;

use crate::support::plane::{raw, Plane, Resp};

/// The `Origin` a browser on the console's own page sends (`raw` sends `Host: 127.0.0.1`).
pub const SAME_ORIGIN: &str = "http://127.0.0.1";

/// A form POST with the given cookie and Origin (none: no header).
pub fn post_form(
    p: &Plane,
    path: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
    body: &str,
) -> Resp {
    let mut headers = vec![("Content-Type", "application/x-www-form-urlencoded")];
    let cookie = cookie.map(|c| format!("citadel_console={c}"));
    if let Some(c) = &cookie {
        headers.push(("Cookie", c));
    }
    if let Some(o) = origin {
        headers.push(("Origin", o));
    }
    raw(p.port, "POST", path, &headers, Some(body))
}

/// A GET with the session cookie.
pub fn get(p: &Plane, path: &str, cookie: &str) -> Resp {
    let c = format!("citadel_console={cookie}");
    raw(p.port, "GET", path, &[("Cookie", &c)], None)
}

/// Signs in with `token`; the session id of the cookie.
pub fn login(p: &Plane, token: &str) -> String {
    let r = post_form(
        p,
        "/ui/login",
        None,
        Some(SAME_ORIGIN),
        &format!("token={token}"),
    );
    assert_eq!(r.status, 303, "{}", r.body);
    let set = r.header("set-cookie").expect("a session cookie");
    set.split(';')
        .next()
        .unwrap()
        .trim_start_matches("citadel_console=")
        .to_string()
}

/// A read-only console token issued by the admin.
pub fn console_token(p: &Plane) -> String {
    let v = p.json(
        "POST",
        "/api/v1/console/tokens",
        Some(serde_json::json!({"name": "viewer"})),
    );
    v["token"].as_str().unwrap().to_string()
}
