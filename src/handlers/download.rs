//! `model_download` (alias `DOWNLOAD_MODEL`): fetches one file over HTTP(S) into the models
//! folder. The bytes go to `NAME.part`; an interrupted or cancelled download keeps it and the
//! next attempt resumes with `Range`; the free space is checked before the first byte; the
//! SHA-256 is verified when the payload gives one; the finished file appears under its name by
//! an atomic rename, so a reader never sees half a model. Progress goes out as chunk events at
//! most every whole percent or second. A file name that could leave the models folder is refused.
//! This handler writes only inside its models folder.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::http::{describe, display_url, status_is_retryable, transport_error};
use super::{Handler, HandlerError, JobContext};

/// Where downloads go and how they behave.
#[derive(Debug, Clone)]
pub struct DownloadPolicy {
    pub models_dir: PathBuf,
    /// Free space that must remain after the download.
    pub reserve_bytes: u64,
    /// Progress chunks go out at most this often (and on every whole percent).
    pub progress_every: Duration,
}

impl DownloadPolicy {
    pub fn new(models_dir: PathBuf) -> Self {
        Self {
            models_dir,
            reserve_bytes: 256 * 1024 * 1024,
            progress_every: Duration::from_secs(1),
        }
    }
}

/// The handler.
#[derive(Debug)]
pub struct ModelDownload {
    policy: DownloadPolicy,
    http: reqwest::Client,
}

impl ModelDownload {
    pub fn new(policy: DownloadPolicy) -> reqwest::Result<Self> {
        Ok(Self {
            policy,
            http: super::http_client(Duration::from_secs(15))?,
        })
    }
}

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

fn io_error(what: &str, path: &Path, e: &std::io::Error) -> HandlerError {
    // A full disk or a permission problem will not fix itself by retrying at once; the rest
    // (interrupted, busy) might.
    let retryable = !matches!(
        e.kind(),
        std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::StorageFull
    );
    HandlerError {
        message: format!("model_download: {what} {}: {e}", path.display()),
        retryable,
    }
}

/// SHA-256 of what is already in `path`, fed into `hasher`.
async fn hash_into(path: &Path, hasher: &mut Sha256) -> std::io::Result<u64> {
    let mut f = tokio::fs::File::open(path).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = f.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// When to send the next progress chunk.
#[derive(Debug)]
struct Progress {
    every: Duration,
    last_at: Instant,
    last_percent: Option<u64>,
}

impl Progress {
    fn due(&mut self, done: u64, total: Option<u64>) -> bool {
        let percent = total.filter(|t| *t > 0).map(|t| done * 100 / t);
        let due = self.last_at.elapsed() >= self.every
            || (percent.is_some() && percent > self.last_percent);
        if due {
            self.last_at = Instant::now();
            self.last_percent = percent;
        }
        due
    }
}

fn progress_chunk(done: u64, total: Option<u64>) -> String {
    let percent = total
        .filter(|t| *t > 0)
        .map(|t| ((done as f64 / t as f64) * 1000.0).round() / 10.0);
    json!({"type": "progress", "bytes": done, "total": total, "percent": percent}).to_string()
}

/// The total length from `Content-Range: bytes a-b/N` (or `bytes */N`).
fn range_total(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    v.rsplit_once('/')?.1.trim().parse().ok()
}

/// The first byte of a `206` answer (`bytes a-b/N` → a).
fn range_start(resp: &reqwest::Response) -> Option<u64> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let spec = v.trim().strip_prefix("bytes ")?;
    spec.split_once('-')?.0.trim().parse().ok()
}

#[async_trait]
impl Handler for ModelDownload {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let req = Request::parse(&ctx.job.payload)?;
        let dir = &self.policy.models_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error("cannot create", dir, &e))?;
        let target = dir.join(&req.filename);
        let part = dir.join(format!("{}.part", req.filename));
        let shown = display_url(&req.url);

        // Already here (and matching the checksum when one is given): nothing to fetch. Without
        // a checksum the file is not read again (a model can be tens of GB).
        if let Ok(meta) = tokio::fs::metadata(&target).await {
            let digest = match &req.sha256 {
                None => None,
                Some(_) => {
                    let mut hasher = Sha256::new();
                    hash_into(&target, &mut hasher)
                        .await
                        .map_err(|e| io_error("cannot read", &target, &e))?;
                    Some(hex(&hasher.finalize()))
                }
            };
            if digest == req.sha256 {
                let cached = json!({"path": target, "filename": req.filename, "bytes": meta.len(),
                    "sha256": digest, "cached": true, "resumed_from": 0});
                return Ok(cached);
            }
            tracing::info!(path = %target.display(), "the existing file does not match the checksum; downloading it again");
        }

        let mut hasher = Sha256::new();
        let mut offset = match tokio::fs::metadata(&part).await {
            Ok(m) => hash_into(&part, &mut hasher)
                .await
                .map_err(|e| io_error("cannot read", &part, &e))
                .map(|n| n.min(m.len()))?,
            Err(_) => 0,
        };
        let mut rb = self.http.get(req.url.clone());
        if offset > 0 {
            rb = rb.header(RANGE, format!("bytes={offset}-"));
        }
        let resp = tokio::select! {
            r = rb.send() => r.map_err(|e| transport_error(&format!("model_download: {shown}"), &e))?,
            () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("model_download: cancelled before the transfer started")),
        };
        let status = resp.status();
        let resumed_from;
        let total = match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 && range_start(&resp) == Some(offset) => {
                resumed_from = offset;
                range_total(&resp).or_else(|| resp.content_length().map(|l| l + offset))
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                // A fresh download, or a server that ignored our range: start from byte 0.
                if offset > 0 {
                    tracing::info!(url = %shown, "the server did not resume; downloading from the start");
                }
                offset = 0;
                hasher = Sha256::new();
                resumed_from = 0;
                if status == StatusCode::OK {
                    resp.content_length()
                } else {
                    range_total(&resp)
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // The partial file is as long as (or longer than) the file: check what we have.
                if range_total(&resp) != Some(offset) {
                    let _ = tokio::fs::remove_file(&part).await;
                    return Err(HandlerError::retryable(format!(
                        "model_download: the partial file of {} was longer than the server's; removed it, the next attempt starts over",
                        req.filename
                    )));
                }
                resumed_from = offset;
                Some(offset)
            }
            s => {
                return Err(HandlerError {
                    message: format!("model_download: {shown} answered {s}"),
                    retryable: status_is_retryable(s),
                })
            }
        };

        if let Some(need) = total.or(req.size).map(|t| t.saturating_sub(offset)) {
            let disk = crate::platform::system::disk_space(dir)
                .map_err(|e| io_error("cannot read the free space of", dir, &e))?;
            if need.saturating_add(self.policy.reserve_bytes) > disk.available_bytes {
                return Err(HandlerError::permanent(format!(
                    "model_download: not enough disk space in {}: {} needs {need} bytes, {} are free and {} must stay free",
                    dir.display(),
                    req.filename,
                    disk.available_bytes,
                    self.policy.reserve_bytes
                )));
            }
        }

        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(offset > 0)
            .truncate(offset == 0)
            .open(&part)
            .await
            .map_err(|e| io_error("cannot open", &part, &e))?;
        let mut progress = Progress {
            every: self.policy.progress_every,
            last_at: Instant::now(),
            last_percent: None,
        };
        ctx.chunks.send(progress_chunk(offset, total)).await;
        let mut resp = resp;
        if status != StatusCode::RANGE_NOT_SATISFIABLE {
            loop {
                let next = tokio::select! {
                    c = resp.chunk() => c,
                    () = ctx.cancel.cancelled() => {
                        let _ = file.flush().await;
                        return Err(HandlerError::retryable(format!(
                            "model_download: cancelled after {offset} bytes; {} is kept and a new attempt resumes it",
                            part.display()
                        )));
                    }
                };
                match next {
                    Ok(Some(bytes)) => {
                        file.write_all(&bytes)
                            .await
                            .map_err(|e| io_error("cannot write", &part, &e))?;
                        hasher.update(&bytes);
                        offset += bytes.len() as u64;
                        if progress.due(offset, total) {
                            ctx.chunks.send(progress_chunk(offset, total)).await;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = file.flush().await;
                        return Err(HandlerError::retryable(format!(
                            "model_download: the transfer from {shown} broke after {offset} bytes ({}); the next attempt resumes it",
                            describe(&e)
                        )));
                    }
                }
            }
        }
        file.sync_all()
            .await
            .map_err(|e| io_error("cannot sync", &part, &e))?;
        drop(file);
        if let Some(t) = total {
            if offset != t {
                return Err(HandlerError::retryable(format!(
                    "model_download: the server sent {offset} of {t} bytes; the next attempt resumes"
                )));
            }
        }
        let digest = hex(&hasher.finalize());
        if let Some(expected) = &req.sha256 {
            if *expected != digest {
                let _ = tokio::fs::remove_file(&part).await;
                return Err(HandlerError::permanent(format!(
                    "model_download: checksum mismatch for {}: expected sha256 {expected}, got {digest}; the download was removed",
                    req.filename
                )));
            }
        }
        tokio::fs::rename(&part, &target)
            .await
            .map_err(|e| io_error("cannot rename into place", &target, &e))?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        ctx.chunks.send(progress_chunk(offset, Some(offset))).await;
        Ok(
            json!({"path": target, "filename": req.filename, "bytes": offset,
            "sha256": digest, "cached": false, "resumed_from": resumed_from}),
        )
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn progress_is_bounded() {
        let mut p = Progress {
            every: Duration::from_secs(3600),
            last_at: Instant::now(),
            last_percent: None,
        };
        let due: usize = (0..=100_000u64)
            .filter(|b| p.due(*b, Some(100_000)))
            .count();
        assert_eq!(due, 101);
        let mut p = Progress {
            every: Duration::from_secs(3600),
            last_at: Instant::now(),
            last_percent: None,
        };
        assert!(!p.due(5, None));
    }
}
