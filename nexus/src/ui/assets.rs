//! The console's stylesheets and scripts (its own, and the vendored xterm.js of the terminal
//! page, `assets/vendor/xterm/`, MIT, its license beside it), embedded in the binary (`include_str!`) and served with
//! a strong ETag (the content's SHA-256) so a browser revalidates and gets 304 while they are
//! unchanged. No session is needed for them: they hold nothing of the store. This module must
//! never serve anything but these embedded files.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

const APP_JS: &str = include_str!("../../assets/app.js");
const APP_CSS: &str = include_str!("../../assets/app.css");
const TERMINAL_JS: &str = include_str!("../../assets/terminal.js");
const XTERM_JS: &str = include_str!("../../assets/vendor/xterm/xterm.js");
const XTERM_CSS: &str = include_str!("../../assets/vendor/xterm/xterm.css");

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// The embedded files: name, content type, body.
const FILES: [(&str, &str, &str); 5] = [
    ("app.js", JS, APP_JS),
    ("app.css", CSS, APP_CSS),
    ("terminal.js", JS, TERMINAL_JS),
    ("xterm.js", JS, XTERM_JS),
    ("xterm.css", CSS, XTERM_CSS),
];

/// Each file's ETag, computed once.
fn etags() -> &'static [String; 5] {
    static TAGS: OnceLock<[String; 5]> = OnceLock::new();
    TAGS.get_or_init(|| {
        FILES.map(|(_, _, body)| format!("\"{}\"", &crate::credentials::sha256_hex(body)[..32]))
    })
}

/// Whether an `If-None-Match` value names `etag` (or is `*`).
pub fn matches(if_none_match: &str, etag: &str) -> bool {
    if_none_match
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// `GET /ui/assets/{name}`.
pub async fn serve(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(n) = FILES.iter().position(|(f, _, _)| *f == name) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let (_, ty, body) = FILES[n];
    let etag = &etags()[n];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches(v, etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, ty)], body).into_response()
    };
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_are_understood() {
        assert!(matches("\"a\"", "\"a\""));
        assert!(matches("\"b\", W/\"a\"", "\"a\""));
        assert!(matches("*", "\"a\""));
        assert!(!matches("\"b\"", "\"a\""));
        assert_ne!(etags()[0], etags()[1]);
    }
}
