//! One `model_download` transfer, step by step: the cached-file check, resuming the `.part`
//! file, the request and what its status means, the disk check, streaming the body into the
//! `.part` file with its SHA-256, and the checks before the atomic rename into place. Writes
//! only the job's `.part` file and its target in the models folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{io_error, progress_chunk, DownloadPolicy, Progress, Request};
use crate::handlers::http::{describe, display_url, status_is_retryable, transport_error};
use crate::handlers::{HandlerError, JobContext};

/// One download under way: where it goes, how many bytes are in its `.part` file and their
/// running SHA-256.
pub(super) struct Download<'a> {
    policy: &'a DownloadPolicy,
    ctx: &'a JobContext,
    req: Request,
    target: PathBuf,
    part: PathBuf,
    shown: String,
    hasher: Sha256,
    offset: u64,
}

impl<'a> Download<'a> {
    pub(super) fn new(policy: &'a DownloadPolicy, ctx: &'a JobContext, req: Request) -> Self {
        let dir = &policy.models_dir;
        Self {
            policy,
            ctx,
            target: dir.join(&req.filename),
            part: dir.join(format!("{}.part", req.filename)),
            shown: display_url(&req.url),
            req,
            hasher: Sha256::new(),
            offset: 0,
        }
    }

    /// The answer when the file is already here (and matches the checksum when one is given):
    /// nothing to fetch. Without a checksum the file is not read again (a model can be tens of
    /// GB).
    pub(super) async fn cached(&self) -> Result<Option<Value>, HandlerError> {
        let Ok(meta) = tokio::fs::metadata(&self.target).await else {
            return Ok(None);
        };
        let digest = match &self.req.sha256 {
            None => None,
            Some(_) => {
                let mut hasher = Sha256::new();
                hash_into(&self.target, &mut hasher)
                    .await
                    .map_err(|e| io_error("cannot read", &self.target, &e))?;
                Some(hex(&hasher.finalize()))
            }
        };
        if digest == self.req.sha256 {
            let cached = json!({"path": self.target, "filename": self.req.filename, "bytes": meta.len(),
                "sha256": digest, "cached": true, "resumed_from": 0});
            return Ok(Some(cached));
        }
        tracing::info!(path = %self.target.display(), "the existing file does not match the checksum; downloading it again");
        Ok(None)
    }

    /// Hashes what an earlier attempt left in the `.part` file; the download resumes after it.
    pub(super) async fn resume_offset(&mut self) -> Result<(), HandlerError> {
        self.offset = match tokio::fs::metadata(&self.part).await {
            Ok(m) => hash_into(&self.part, &mut self.hasher)
                .await
                .map_err(|e| io_error("cannot read", &self.part, &e))
                .map(|n| n.min(m.len()))?,
            Err(_) => 0,
        };
        Ok(())
    }

    /// Asks for the file (from the resume offset, if any), unless the job is cancelled first.
    pub(super) async fn send(
        &self,
        http: &reqwest::Client,
    ) -> Result<reqwest::Response, HandlerError> {
        let mut rb = http.get(self.req.url.clone());
        if self.offset > 0 {
            rb = rb.header(RANGE, format!("bytes={}-", self.offset));
        }
        let shown = &self.shown;
        Ok(tokio::select! {
            r = rb.send() => r.map_err(|e| transport_error(&format!("model_download: {shown}"), &e))?,
            () = self.ctx.cancel.cancelled() => return Err(HandlerError::retryable("model_download: cancelled before the transfer started")),
        })
    }

    /// Reads the answer's status: whether the server resumed, starts over or has nothing more
    /// to send. Returns the file's total length (when known) and the byte it resumed from.
    pub(super) async fn start(
        &mut self,
        resp: &reqwest::Response,
    ) -> Result<(Option<u64>, u64), HandlerError> {
        let status = resp.status();
        let offset = self.offset;
        match status {
            StatusCode::PARTIAL_CONTENT if offset > 0 && range_start(resp) == Some(offset) => {
                let total = range_total(resp).or_else(|| resp.content_length().map(|l| l + offset));
                Ok((total, offset))
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                // A fresh download, or a server that ignored our range: start from byte 0.
                if offset > 0 {
                    tracing::info!(url = %self.shown, "the server did not resume; downloading from the start");
                }
                self.offset = 0;
                self.hasher = Sha256::new();
                if status == StatusCode::OK {
                    Ok((resp.content_length(), 0))
                } else {
                    Ok((range_total(resp), 0))
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
                // The partial file is as long as (or longer than) the file: check what we have.
                if range_total(resp) != Some(offset) {
                    let _ = tokio::fs::remove_file(&self.part).await;
                    return Err(HandlerError::retryable(format!(
                        "model_download: the partial file of {} was longer than the server's; removed it, the next attempt starts over",
                        self.req.filename
                    )));
                }
                Ok((Some(offset), offset))
            }
            s => Err(HandlerError {
                message: format!("model_download: {} answered {s}", self.shown),
                retryable: status_is_retryable(s),
            }),
        }
    }

    /// Refuses a download that would leave less than the reserve free.
    pub(super) fn check_disk(&self, total: Option<u64>) -> Result<(), HandlerError> {
        let Some(need) = total
            .or(self.req.size)
            .map(|t| t.saturating_sub(self.offset))
        else {
            return Ok(());
        };
        let dir = &self.policy.models_dir;
        let disk = crate::platform::system::disk_space(dir)
            .map_err(|e| io_error("cannot read the free space of", dir, &e))?;
        if need.saturating_add(self.policy.reserve_bytes) > disk.available_bytes {
            return Err(HandlerError::permanent(format!(
                "model_download: not enough disk space in {}: {} needs {need} bytes, {} are free and {} must stay free",
                dir.display(),
                self.req.filename,
                disk.available_bytes,
                self.policy.reserve_bytes
            )));
        }
        Ok(())
    }

    /// Streams the body into the `.part` file (nothing to stream when the server said the
    /// partial file is already whole) and syncs it; progress starts at the resume offset.
    pub(super) async fn write_part(
        &mut self,
        resp: reqwest::Response,
        total: Option<u64>,
    ) -> Result<(), HandlerError> {
        let status = resp.status();
        let mut file = self.open_part().await?;
        let mut progress = Progress {
            every: self.policy.progress_every,
            last_at: Instant::now(),
            last_percent: None,
        };
        self.ctx
            .chunks
            .send(progress_chunk(self.offset, total))
            .await;
        if status != StatusCode::RANGE_NOT_SATISFIABLE {
            self.copy_body(resp, &mut file, &mut progress, total)
                .await?;
        }
        file.sync_all()
            .await
            .map_err(|e| io_error("cannot sync", &self.part, &e))
    }

    /// The `.part` file, appended to when resuming, else emptied.
    async fn open_part(&self) -> Result<tokio::fs::File, HandlerError> {
        tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(self.offset > 0)
            .truncate(self.offset == 0)
            .open(&self.part)
            .await
            .map_err(|e| io_error("cannot open", &self.part, &e))
    }

    /// Writes the body into the `.part` file as it arrives, hashing it and sending progress.
    async fn copy_body(
        &mut self,
        mut resp: reqwest::Response,
        file: &mut tokio::fs::File,
        progress: &mut Progress,
        total: Option<u64>,
    ) -> Result<(), HandlerError> {
        loop {
            let next = tokio::select! {
                c = resp.chunk() => c,
                () = self.ctx.cancel.cancelled() => {
                    let _ = file.flush().await;
                    return Err(HandlerError::retryable(format!(
                        "model_download: cancelled after {} bytes; {} is kept and a new attempt resumes it",
                        self.offset,
                        self.part.display()
                    )));
                }
            };
            match next {
                Ok(Some(bytes)) => {
                    file.write_all(&bytes)
                        .await
                        .map_err(|e| io_error("cannot write", &self.part, &e))?;
                    self.hasher.update(&bytes);
                    self.offset += bytes.len() as u64;
                    if progress.due(self.offset, total) {
                        self.ctx
                            .chunks
                            .send(progress_chunk(self.offset, total))
                            .await;
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let _ = file.flush().await;
                    return Err(HandlerError::retryable(format!(
                        "model_download: the transfer from {} broke after {} bytes ({}); the next attempt resumes it",
                        self.shown,
                        self.offset,
                        describe(&e)
                    )));
                }
            }
        }
    }

    /// Checks the length and the checksum, then renames the `.part` file into place.
    pub(super) async fn finish(
        self,
        total: Option<u64>,
        resumed_from: u64,
    ) -> Result<Value, HandlerError> {
        let offset = self.offset;
        if let Some(t) = total {
            if offset != t {
                return Err(HandlerError::retryable(format!(
                    "model_download: the server sent {offset} of {t} bytes; the next attempt resumes"
                )));
            }
        }
        let digest = hex(&self.hasher.finalize());
        if let Some(expected) = &self.req.sha256 {
            if *expected != digest {
                let _ = tokio::fs::remove_file(&self.part).await;
                return Err(HandlerError::permanent(format!(
                    "model_download: checksum mismatch for {}: expected sha256 {expected}, got {digest}; the download was removed",
                    self.req.filename
                )));
            }
        }
        tokio::fs::rename(&self.part, &self.target)
            .await
            .map_err(|e| io_error("cannot rename into place", &self.target, &e))?;
        if let Ok(d) = std::fs::File::open(&self.policy.models_dir) {
            let _ = d.sync_all();
        }
        self.ctx
            .chunks
            .send(progress_chunk(offset, Some(offset)))
            .await;
        Ok(
            json!({"path": self.target, "filename": self.req.filename, "bytes": offset,
            "sha256": digest, "cached": false, "resumed_from": resumed_from}),
        )
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
