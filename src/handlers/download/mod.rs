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
use serde_json::{json, Value};

use super::{Handler, HandlerError, JobContext};

mod request;
mod transfer;

pub use request::{check_filename, Request};
use transfer::Download;

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

#[async_trait]
impl Handler for ModelDownload {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let req = Request::parse(&ctx.job.payload)?;
        let dir = &self.policy.models_dir;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| io_error("cannot create", dir, &e))?;
        let mut dl = Download::new(&self.policy, ctx, req);
        if let Some(cached) = dl.cached().await? {
            return Ok(cached);
        }
        dl.resume_offset().await?;
        let resp = dl.send(&self.http).await?;
        let (total, resumed_from) = dl.start(&resp).await?;
        dl.check_disk(total)?;
        dl.write_part(resp, total).await?;
        dl.finish(total, resumed_from).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
