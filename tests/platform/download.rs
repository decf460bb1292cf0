//! `model_download` against a real HTTP server with Range support: resume after a transfer
//! breaks half way, a server that ignores Range, checksum mismatch, path traversal, the disk
//! check, cancellation.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel::handlers::{ChunkSink, DownloadPolicy, Handler, JobContext, ModelDownload};
use citadel_transports::{Job, JobId};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::servers::FileServer;

pub fn context(job_type: &str, payload: Value) -> (JobContext, mpsc::Receiver<String>) {
    let (chunks, rx) = ChunkSink::channel(100_000);
    let job = Job {
        id: JobId::new(format!("job-{}", fastrand::u64(..))).unwrap(),
        job_type: job_type.into(),
        payload,
        ray_id: None,
        enqueued_at: None,
        attempt: 1,
        source: "test".into(),
    };
    let ctx = JobContext {
        job,
        cancel: CancellationToken::new(),
        deadline: None,
        chunks,
    };
    (ctx, rx)
}

fn body(len: usize) -> Vec<u8> {
    (0..len).map(|_| fastrand::u8(..)).collect()
}

fn sha(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn handler(dir: &Path) -> ModelDownload {
    let mut policy = DownloadPolicy::new(dir.to_path_buf());
    policy.reserve_bytes = 0;
    ModelDownload::new(policy).unwrap()
}

fn progress(rx: &mut mpsc::Receiver<String>) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(c) = rx.try_recv() {
        let v: Value = serde_json::from_str(&c).unwrap();
        assert_eq!(v["type"], "progress", "{c}");
        out.push(v);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_download_that_breaks_half_way_resumes_with_range() {
    let data = body(1_000_000);
    let server = FileServer::start(data.clone()).await;
    *server.files.cut_next_after.lock().unwrap() = Some(400_000);
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let payload = json!({"url": server.url("model.gguf"), "sha256": sha(&data)});

    let (ctx, _rx) = context("model_download", payload.clone());
    let err = h.run(&ctx).await.unwrap_err();
    assert!(err.retryable, "{err}");
    let part = dir.path().join("model.gguf.part");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept <= 400_000, "kept {kept}");
    assert!(!dir.path().join("model.gguf").exists());

    let (ctx, mut rx) = context("DOWNLOAD_MODEL", payload);
    let result = h.run(&ctx).await.unwrap();
    assert_eq!(result["resumed_from"], kept);
    assert_eq!(result["bytes"], 1_000_000);
    assert_eq!(result["sha256"], sha(&data));
    assert_eq!(result["cached"], false);
    assert_eq!(std::fs::read(dir.path().join("model.gguf")).unwrap(), data);
    assert!(!part.exists());
    let ranges = server.files.ranges.lock().unwrap().clone();
    assert_eq!(ranges, vec![None, Some(format!("bytes={kept}-"))]);
    let p = progress(&mut rx);
    assert!(
        p.len() >= 2 && p.len() <= 110,
        "{} progress chunks",
        p.len()
    );
    assert_eq!(p.first().unwrap()["bytes"], kept);
    assert_eq!(p.last().unwrap()["percent"], 100.0);

    // A third run finds the file in place and fetches nothing.
    let (ctx, _rx) = context(
        "model_download",
        json!({"url": server.url("model.gguf"), "sha256": sha(&data)}),
    );
    assert_eq!(h.run(&ctx).await.unwrap()["cached"], true);
    assert_eq!(server.files.ranges.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_that_ignores_range_is_downloaded_from_the_start() {
    let data = body(300_000);
    let server = FileServer::start(data.clone()).await;
    server.files.ignore_range.store(true, Ordering::SeqCst);
    *server.files.cut_next_after.lock().unwrap() = Some(100_000);
    let dir = tempfile::tempdir().unwrap();
    let h = handler(dir.path());
    let payload = json!({"url": server.url("w.bin")});
    let (ctx, _rx) = context("model_download", payload.clone());
    assert!(h.run(&ctx).await.unwrap_err().retryable);
    let (ctx, _rx) = context("model_download", payload);
    let r = h.run(&ctx).await.unwrap();
    assert_eq!(r["resumed_from"], 0);
    assert_eq!(std::fs::read(dir.path().join("w.bin")).unwrap(), data);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checksum_mismatch_fails_for_good_and_leaves_nothing() {
    let data = body(50_000);
    let server = FileServer::start(data).await;
    let dir = tempfile::tempdir().unwrap();
    let (ctx, _rx) = context(
        "model_download",
        json!({"url": server.url("m.bin"), "sha256": "0".repeat(64)}),
    );
    let err = handler(dir.path()).run(&ctx).await.unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("checksum mismatch"), "{err}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn names_that_leave_the_models_folder_are_refused_before_any_request() {
    let server = FileServer::start(body(10)).await;
    let root = tempfile::tempdir().unwrap();
    let models = root.path().join("models");
    let h = handler(&models);
    for payload in [
        json!({"url": server.url("x"), "filename": "../escaped"}),
        json!({"url": server.url("x"), "filename": "/etc/passwd"}),
        json!({"url": server.url("x"), "filename": ".."}),
        json!({"url": format!("http://{}/files/..%2F..%2Fescaped", server.addr)}),
    ] {
        let (ctx, _rx) = context("model_download", payload.clone());
        let err = h.run(&ctx).await.unwrap_err();
        assert!(!err.retryable, "{payload}: {err}");
    }
    assert!(server.files.ranges.lock().unwrap().is_empty());
    assert!(!root.path().join("escaped").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn too_little_disk_space_is_refused_before_the_first_byte() {
    let server = FileServer::start(body(10_000)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut policy = DownloadPolicy::new(dir.path().to_path_buf());
    policy.reserve_bytes = u64::MAX / 2;
    let (ctx, _rx) = context("model_download", json!({"url": server.url("big.bin")}));
    let err = ModelDownload::new(policy)
        .unwrap()
        .run(&ctx)
        .await
        .unwrap_err();
    assert!(!err.retryable);
    assert!(err.message.contains("not enough disk space"), "{err}");
    assert!(!dir.path().join("big.bin.part").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn cancellation_stops_the_transfer_and_keeps_the_part_for_later() {
    let data = body(2_000_000);
    let server = FileServer::start(data.clone()).await;
    server.files.slow.store(true, Ordering::SeqCst);
    let dir = tempfile::tempdir().unwrap();
    let h = std::sync::Arc::new(handler(dir.path()));
    let payload = json!({"url": server.url("slow.bin")});
    let (ctx, _rx) = context("model_download", payload.clone());
    let cancel = ctx.cancel.clone();
    let run = tokio::spawn({
        let h = h.clone();
        async move { h.run(&ctx).await }
    });
    let part = dir.path().join("slow.bin.part");
    crate::support::worker::eventually(Duration::from_secs(10), "bytes in the .part file", || {
        let part = part.clone();
        async move { std::fs::metadata(&part).is_ok_and(|m| m.len() > 0) }
    })
    .await;
    let cancelled_at = std::time::Instant::now();
    cancel.cancel();
    let err = run.await.unwrap().unwrap_err();
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(1),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert!(err.message.contains("cancelled"), "{err}");
    let kept = std::fs::metadata(&part).unwrap().len();
    assert!(kept > 0 && kept < data.len() as u64);

    server.files.slow.store(false, Ordering::SeqCst);
    let (ctx, _rx) = context("model_download", payload);
    let r = h.run(&ctx).await.unwrap();
    assert!(r["resumed_from"].as_u64().unwrap() >= kept);
    assert_eq!(std::fs::read(dir.path().join("slow.bin")).unwrap(), data);
}
