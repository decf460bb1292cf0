//! The `model_download` payload: what to fetch, under which name, and the checks that keep
//! the name inside the models folder. Parsing only; nothing here touches the disk or the network.

use serde_json::Value;

use crate::handlers::HandlerError;

/// The payload: `url` (http or https), optional `filename` (default: the URL's last path
/// segment), `sha256` (hex) and `size` (bytes, for the disk check when the server does not say).
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub url: reqwest::Url,
    pub filename: String,
    pub sha256: Option<String>,
    pub size: Option<u64>,
}

impl Request {
    pub fn parse(payload: &Value) -> Result<Self, HandlerError> {
        let bad = |m: String| HandlerError::permanent(format!("model_download: {m}"));
        let url = payload
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("the payload needs `url` (http:// or https://)".into()))?;
        let url = reqwest::Url::parse(url).map_err(|e| bad(format!("`url` is not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "`url` must be http or https, not {}",
                url.scheme()
            )));
        }
        let filename = match payload.get("filename").and_then(Value::as_str) {
            Some(f) => f.to_string(),
            None => url
                .path_segments()
                .and_then(|mut s| s.next_back())
                .unwrap_or("")
                .to_string(),
        };
        check_filename(&filename).map_err(bad)?;
        let sha256 = match payload.get("sha256").and_then(Value::as_str) {
            Some(h) if h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()) => {
                Some(h.to_ascii_lowercase())
            }
            Some(h) => return Err(bad(format!("`sha256` must be 64 hex digits, got `{h}`"))),
            None => None,
        };
        let size = match payload.get("size") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .ok_or_else(|| bad(format!("`size` must be a number of bytes, got {v}")))?,
            ),
        };
        Ok(Self {
            url,
            filename,
            sha256,
            size,
        })
    }
}

/// A plain file name that stays in the models folder: no separators, no `..`, no hidden or
/// `.part` names, no control characters, at most 255 bytes.
pub fn check_filename(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("no file name: give `filename`, or a URL whose path ends in one".into());
    }
    if name.len() > 255 {
        return Err("the file name is longer than 255 bytes".into());
    }
    if name.contains(['/', '\\']) || name.starts_with('.') || name.chars().any(char::is_control) {
        return Err(format!(
            "refusing the file name `{}`: it must be a plain name inside the models folder (no /, \\, leading dot or control characters)",
            name.escape_debug()
        ));
    }
    if name.ends_with(".part") {
        return Err(format!(
            "refusing the file name `{name}`: `.part` is for unfinished downloads"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn payloads_are_checked() {
        let r = Request::parse(&json!({"url": "https://h/models/a.gguf?x=1"})).unwrap();
        assert_eq!(r.filename, "a.gguf");
        let sha = "AB".repeat(32);
        let r = Request::parse(
            &json!({"url": "http://h/x", "filename": "m.bin", "sha256": sha, "size": "10"}),
        )
        .unwrap();
        assert_eq!(r.sha256.unwrap(), "ab".repeat(32));
        assert_eq!(r.size, Some(10));
        for bad in [
            json!({}),
            json!({"url": "ftp://h/a"}),
            json!({"url": "http://h/"}),
            json!({"url": "http://h/a", "filename": "../etc/passwd"}),
            json!({"url": "http://h/a", "filename": "..\\x"}),
            json!({"url": "http://h/a", "filename": ".."}),
            json!({"url": "http://h/a", "filename": "a.part"}),
            json!({"url": "http://h/a", "sha256": "xyz"}),
        ] {
            let e = Request::parse(&bad).unwrap_err();
            assert!(!e.retryable, "{bad}: {e}");
        }
    }
}
