//! `citadel journal` as a user runs it: the real binary on a journal the test writes, opened
//! directly and, while a "worker" holds it, through the worker's socket.

use std::path::Path;
use std::process::Command;

use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};

fn citadel(journal: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("journal")
        .arg("--journal")
        .arg(journal)
        .args(args)
        .env_remove("CITADEL_DATA_DIR")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(journal: &Path, args: &[&str]) -> String {
    let (success, stdout, stderr) = citadel(journal, args);
    assert!(success, "citadel journal {args:?} failed: {stderr}");
    stdout
}

async fn write_history(journal: &Journal) {
    let ev = |id: &str, event| {
        NewEvent::new(JobId::new(id).unwrap(), "redis", event).delivery("1700000000000-0")
    };
    let job = |id: &str, ty: &str| Job {
        id: JobId::new(id).unwrap(),
        job_type: ty.into(),
        payload: serde_json::json!({"prompt": "hi"}),
        ray_id: Some("ray-1".into()),
        enqueued_at: None,
        attempt: 1,
        source: "redis:jobs:v1:gpu-general".into(),
    };
    for e in [
        ev(
            "ok-1",
            EventKind::Received {
                job: job("ok-1", "video_render"),
            },
        ),
        ev("ok-1", EventKind::Started { attempt: 1 }),
        ev("ok-1", EventKind::Chunk { index: 9 }),
        ev(
            "ok-1",
            EventKind::Succeeded {
                result: serde_json::json!({"content": "hello"}),
            },
        ),
        ev("ok-1", EventKind::Acked),
        ev(
            "bad-1",
            EventKind::Received {
                job: job("bad-1", "shell_command"),
            },
        ),
        ev("bad-1", EventKind::Started { attempt: 1 }),
        ev(
            "bad-1",
            EventKind::Failed {
                error: "exit status 2".into(),
                retryable: true,
            },
        ),
        ev("bad-1", EventKind::Retried { delay_ms: 2000 }),
        ev(
            "run-1",
            EventKind::Received {
                job: job("run-1", "noop"),
            },
        ),
        ev("run-1", EventKind::Started { attempt: 1 }),
    ] {
        journal.append(e).await.unwrap();
    }
}

fn check_every_command(dir: &Path) {
    let ls = ok(dir, &["ls"]);
    assert!(ls.starts_with("JOB"), "{ls}");
    for (job, state) in [
        ("ok-1", "acked"),
        ("bad-1", "retried"),
        ("run-1", "running"),
    ] {
        let line = ls
            .lines()
            .find(|l| l.starts_with(job))
            .unwrap_or_else(|| panic!("{job} missing:\n{ls}"));
        assert!(line.contains(state), "{line}");
    }
    let unsettled = ok(dir, &["ls", "--state", "unsettled", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&unsettled).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["job_id"], "run-1");
    let by_type = ok(dir, &["ls", "--type", "shell_command"]);
    assert_eq!(by_type.lines().count(), 2, "{by_type}");
    assert_eq!(
        ok(dir, &["ls", "--since", "1h", "-n", "1"]).lines().count(),
        2
    );
    let (success, _, stderr) = citadel(dir, &["ls", "--state", "bogus"]);
    assert!(
        !success && stderr.contains("unknown state `bogus`"),
        "{stderr}"
    );

    let show = ok(dir, &["show", "ok-1"]);
    for word in [
        "received",
        "started",
        "chunk",
        "succeeded",
        "acked",
        "+",
        "hello",
    ] {
        assert!(show.contains(word), "`{word}` not in:\n{show}");
    }
    let show: serde_json::Value =
        serde_json::from_str(&ok(dir, &["show", "bad-1", "--json"])).unwrap();
    assert_eq!(show["state"]["errors"][0], "exit status 2");
    assert_eq!(show["events"].as_array().unwrap().len(), 4);
    let (success, _, stderr) = citadel(dir, &["show", "nope"]);
    assert!(!success && stderr.contains("no job `nope`"), "{stderr}");

    let tail = ok(dir, &["tail", "-n", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(tail.lines().last().unwrap().contains("started"), "{tail}");

    let replay: serde_json::Value =
        serde_json::from_str(&ok(dir, &["replay", "--at-seq", "3", "--job", "ok-1"])).unwrap();
    assert_eq!(replay["phase"]["phase"], "running");
    assert_eq!(replay["last_chunk"], 9);
    // --execute re-runs a recorded job's handler here, and says clearly when it cannot.
    let (success, stdout, stderr) = citadel(dir, &["replay", "--job", "run-1", "--execute"]);
    assert!(success, "{stderr}");
    assert!(
        stderr.contains("re-running run-1 (noop) locally"),
        "{stderr}"
    );
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap(),
        serde_json::json!({})
    );
    let (success, _, stderr) = citadel(dir, &["replay", "--job", "ok-1", "--execute"]);
    assert!(
        !success && stderr.contains("`video_render` cannot run here"),
        "{stderr}"
    );
    let (success, _, stderr) = citadel(dir, &["replay", "--job", "bad-1", "--execute"]);
    assert!(
        !success && stderr.contains("`shell_command` cannot run here"),
        "shell stays off: {stderr}"
    );
    let replay = ok(dir, &["replay", "--at-seq", "7"]);
    assert!(
        replay.contains("bad-1") && !replay.contains("run-1"),
        "{replay}"
    );

    let export = ok(dir, &["export"]);
    let lines: Vec<serde_json::Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11);
    assert_eq!(lines[0]["seq"], 1);
    assert_eq!(lines[0]["event"]["type"], "received");
    assert_eq!(lines[0]["event"]["data"]["job"]["type"], "video_render");
    assert_eq!(ok(dir, &["export", "--job", "run-1"]).lines().count(), 2);
    assert_eq!(ok(dir, &["export", "--from-seq", "10"]).lines().count(), 2);

    let stats: serde_json::Value = serde_json::from_str(&ok(dir, &["stats", "--json"])).unwrap();
    assert_eq!(stats["events"], 11);
    assert_eq!(stats["jobs"], 3);
    assert_eq!(stats["unsettled"], 1);
    assert_eq!(stats["by_state"]["acked"], 1);
    assert!(stats["size_on_disk"].as_u64().unwrap() > 0);
    assert!(ok(dir, &["stats"]).contains("size on disk"));

    let (success, _, stderr) = citadel(dir, &["compact"]);
    assert!(!success && stderr.contains("--max-age"), "{stderr}");
}

#[tokio::test]
async fn every_subcommand_works_on_a_journal_at_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    {
        let (journal, _) = Journal::open(&dir, JournalOptions::default()).unwrap();
        write_history(&journal).await;
    }
    check_every_command(&dir);
    let stats: serde_json::Value = serde_json::from_str(&ok(&dir, &["stats", "--json"])).unwrap();
    assert_eq!(stats["served_by_running_worker"], false);
    // Inspection never recovers or writes: the running job is still running.
    assert!(ok(&dir, &["ls", "--state", "running"]).contains("run-1"));
    let out = ok(&dir, &["compact", "--max-age", "0s"]);
    assert!(out.contains("removed 2 settled jobs"), "{out}");
    assert_eq!(ok(&dir, &["export"]).lines().count(), 2);
}

#[tokio::test]
async fn every_subcommand_works_on_a_running_workers_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("journal");
    let (journal, _) = Journal::open(&dir, JournalOptions::default()).unwrap();
    write_history(&journal).await;
    let server = citadel_journal::remote::serve(journal.clone())
        .await
        .unwrap();
    let dir2 = dir.clone();
    tokio::task::spawn_blocking(move || check_every_command(&dir2))
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_str(
        &tokio::task::spawn_blocking({
            let dir = dir.clone();
            move || ok(&dir, &["stats", "--json"])
        })
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(stats["served_by_running_worker"], true);
    let out = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || ok(&dir, &["compact", "--max-size", "0"])
    })
    .await
    .unwrap();
    assert!(out.contains("removed 2 settled jobs"), "{out}");
    assert_eq!(
        journal.info().jobs,
        1,
        "compaction went through the worker's own journal"
    );
    server.abort();
}

#[test]
fn a_missing_journal_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (success, _, stderr) = citadel(&tmp.path().join("nope"), &["ls"]);
    assert!(!success);
    assert!(stderr.starts_with("error: no journal at"), "{stderr}");
}

#[test]
fn help_and_version_work() {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("citadel "));
    for sub in ["ls", "show", "tail", "replay", "export", "stats", "compact"] {
        let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
            .args(["journal", sub, "--help"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{sub} --help failed");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage: citadel journal"),
            "{sub}"
        );
    }
}
