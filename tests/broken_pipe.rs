//! A command whose reader closes the pipe early (`citadel journal export | head`) ends quietly
//! and successfully, as other Unix tools do: no panic message, no error, exit status 0. Each
//! case prints far more than a pipe buffers, so the command is still writing when the reader
//! goes away.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};

use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};

/// Enough jobs that every listing is several times a pipe's 64 KiB buffer.
const JOBS: usize = 3000;

async fn write_many_jobs(dir: &Path) {
    let (journal, _) = Journal::open(dir, JournalOptions::default()).unwrap();
    for n in 0..JOBS {
        let id = JobId::new(format!("job-{n:05}")).unwrap();
        let job = Job::first_delivery(
            id.clone(),
            "llm_inference",
            serde_json::json!({"prompt": "a prompt long enough to fill the pipe quickly"}),
            "redis:jobs:v1:gpu-general",
        );
        let event = NewEvent::new(id, "redis", EventKind::Received { job }).delivery("1-0");
        journal.append_buffered(event).unwrap();
    }
    journal.sync().await.unwrap();
}

/// Runs `citadel journal ARGS`, reads one line, closes the pipe; returns the exit status's
/// success and what the command wrote to stderr.
fn read_one_line_then_close(dir: &Path, args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("journal")
        .arg("--journal")
        .arg(dir)
        .args(args)
        .env_remove("CITADEL_DATA_DIR")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    assert!(
        !first.is_empty(),
        "citadel journal {args:?} printed nothing"
    );
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn output_to_a_closed_pipe_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    write_many_jobs(&dir).await;
    let tail_all = JOBS.to_string();
    for args in [
        &["export"][..],
        &["ls"],
        &["ls", "--json"],
        &["tail", "-n", &tail_all],
    ] {
        let (success, stderr) = read_one_line_then_close(&dir, args);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("error"),
            "citadel journal {args:?} complained: {stderr}"
        );
        assert!(success, "citadel journal {args:?} failed: {stderr}");
    }
}
