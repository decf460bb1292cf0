//! The journal against a real sled store on disk: durability, reopening, recovery, refusal of
//! impossible events, compaction, and the socket a running worker serves.

mod common;

use std::time::Duration;

use citadel_journal::remote::{self, JournalAccess};
use citadel_journal::{
    Durability, EventKind, Journal, JournalError, JournalOptions, Phase, RetentionPolicy, SettledAs,
};
use common::*;

fn open(dir: &std::path::Path) -> (Journal, citadel_journal::OpenReport) {
    Journal::open(dir, JournalOptions::default()).unwrap()
}

#[tokio::test]
async fn appended_events_survive_reopening_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    {
        let (j, report) = open(&path);
        assert_eq!(report.events, 0);
        for e in success("a") {
            j.append(e).await.unwrap();
        }
        j.append(received("b")).await.unwrap();
    }
    let (j, report) = open(&path);
    assert_eq!(report.events, 5);
    assert_eq!(report.jobs, 2);
    assert!(report.damaged.is_empty());
    let events: Vec<_> = j.events(0).map(|e| e.unwrap().unwrap()).collect();
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    assert_eq!(events[2].event.name(), "succeeded");
    assert_eq!(events[2].delivery_id.as_deref(), Some("1-0"));
    let a = j.state(&id("a")).unwrap();
    assert_eq!(a.phase, Some(Phase::Settled(SettledAs::Acked)));
    assert_eq!(
        j.recorded_result(&id("a")).unwrap(),
        Some(serde_json::json!({"job": "a"}))
    );
    assert_eq!(j.events_of(&id("b")).unwrap().len(), 1);
    // New events continue the sequence.
    assert_eq!(j.append(ev("b", EventKind::Released)).await.unwrap().seq, 6);
}

#[tokio::test]
async fn impossible_events_are_refused_and_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(&dir.path().join("j"));
    for e in success("a") {
        j.append(e).await.unwrap();
    }
    j.append(received("a")).await.unwrap();
    let err = j
        .append(ev("a", EventKind::Started { attempt: 2 }))
        .await
        .unwrap_err();
    assert!(matches!(err, JournalError::Transition(_)), "{err}");
    assert!(!err.is_retryable());
    assert!(err.to_string().contains("already succeeded"), "{err}");
    let err = j.append(ev("nope", EventKind::Acked)).await.unwrap_err();
    assert!(err.to_string().contains("first event"), "{err}");
    assert!(j.state(&id("nope")).is_none());
    assert_eq!(j.info().events, 5);
    assert_eq!(j.last_seq(), 5);
}

#[tokio::test]
async fn running_jobs_come_back_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    {
        let (j, _) = open(&path);
        j.append(received("run")).await.unwrap();
        j.append(ev("run", EventKind::Started { attempt: 1 }))
            .await
            .unwrap();
        j.append(received("wait")).await.unwrap();
    }
    // Inspection changes nothing.
    {
        let (j, report) = Journal::open(&path, JournalOptions::inspect()).unwrap();
        assert!(report.interrupted.is_empty());
        assert_eq!(j.state(&id("run")).unwrap().phase, Some(Phase::Running));
    }
    let (j, report) = open(&path);
    assert_eq!(report.interrupted, vec![id("run")]);
    let run = j.state(&id("run")).unwrap();
    assert_eq!(run.phase.unwrap().label(), "interrupted");
    assert_eq!(j.state(&id("wait")).unwrap().phase, Some(Phase::Received));
    // The interrupted job can be delivered and run again as attempt 2.
    j.append(received("run")).await.unwrap();
    j.append(ev(
        "run",
        EventKind::Started {
            attempt: run.next_attempt(1),
        },
    ))
    .await
    .unwrap();
    assert_eq!(j.state(&id("run")).unwrap().attempts, 2);
}

#[tokio::test]
async fn compaction_removes_settled_jobs_and_keeps_sequence_numbers_unique() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    {
        let (j, _) = open(&path);
        for i in 0..20 {
            for e in success(&format!("done-{i}")) {
                j.append(e).await.unwrap();
            }
        }
        j.append(received("open")).await.unwrap();
        j.append(ev("open", EventKind::Started { attempt: 1 }))
            .await
            .unwrap();
        let last = j.last_seq();
        let report = j
            .compact(&RetentionPolicy {
                max_age: Some(Duration::ZERO),
                max_bytes: None,
            })
            .unwrap();
        assert_eq!(report.jobs_removed, 20);
        assert_eq!(report.events_removed, 80);
        assert_eq!(report.jobs_after, 1);
        assert!(j.state(&id("done-3")).is_none());
        assert_eq!(j.events(0).count(), 2);
        // Sequence numbers are never reused, even after the newest events are removed.
        for e in success("later") {
            j.append(e).await.unwrap();
        }
        // `max_age: 0` removes jobs whose last event is older than the current millisecond.
        tokio::time::sleep(Duration::from_millis(2)).await;
        j.compact(&RetentionPolicy {
            max_age: Some(Duration::ZERO),
            max_bytes: None,
        })
        .unwrap();
        assert_eq!(j.last_seq(), last + 4);
    }
    let (j, report) = Journal::open(&path, JournalOptions::inspect()).unwrap();
    assert_eq!(report.jobs, 1);
    let last_before = j.last_seq();
    assert!(j.state(&id("open")).is_some());
    drop(j);
    let (j, _) = open(&path);
    let next = j.append(received("new")).await.unwrap();
    assert!(next.seq > last_before, "{} <= {}", next.seq, last_before);
}

#[tokio::test]
async fn compaction_by_size_keeps_the_newest_settled_jobs() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(&dir.path().join("j"));
    for i in 0..50 {
        for e in success(&format!("job-{i:02}")) {
            j.append(e).await.unwrap();
        }
    }
    let per_job = j.info().events; // 200 events
    assert_eq!(per_job, 200);
    let report = j
        .compact(&RetentionPolicy {
            max_age: None,
            max_bytes: Some(4_000),
        })
        .unwrap();
    assert!(
        report.jobs_removed > 0 && report.jobs_removed < 50,
        "{report:?}"
    );
    assert!(j.state(&id("job-49")).is_some(), "the newest job must stay");
    assert!(j.state(&id("job-00")).is_none(), "the oldest job must go");
}

#[tokio::test]
async fn concurrent_durable_appends_share_flushes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (j, _) = open(&path);
    let mut tasks = Vec::new();
    for w in 0..32 {
        let j = j.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                for e in success(&format!("w{w}-{i}")) {
                    j.append(e).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(j.info().events, 32 * 25 * 4);
    drop(j);
    let (j, report) = open(&path);
    assert_eq!(report.events, 3200);
    assert!(j
        .states()
        .iter()
        .all(|s| s.phase == Some(Phase::Settled(SettledAs::Acked))));
}

/// A flush asked for just after another ended (a job's start journaled moments after the last
/// job's success) waits a moment, and an append that comes meanwhile shares its fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_moments_apart_share_one_flush() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = open(&dir.path().join("j"));
    let mut shared = 0;
    for i in 0..30 {
        let job = format!("job-{i}");
        // Durable: the flusher has just ended a round.
        j.append(received(&job)).await.unwrap();
        let before = j.info().flushes;
        j.append_flushing(ev(&job, EventKind::Started { attempt: 1 }))
            .unwrap();
        // Long enough for the flusher to wake and take what is pending.
        std::thread::sleep(Duration::from_micros(100));
        let done = EventKind::Succeeded {
            result: serde_json::json!(null),
        };
        j.append(ev(&job, done)).await.unwrap();
        if j.info().flushes - before == 1 {
            shared += 1;
        }
    }
    assert!(shared >= 10, "{shared} of 30 rounds shared one flush");
}

#[tokio::test]
async fn buffered_appends_become_durable_on_sync() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let opts = JournalOptions {
        durability: Durability::Buffered,
        recover: true,
    };
    let (j, _) = Journal::open(&path, opts).unwrap();
    j.append_buffered(received("x")).unwrap();
    j.append(ev("x", EventKind::Started { attempt: 1 }))
        .await
        .unwrap();
    j.sync().await.unwrap();
    assert_eq!(j.events(0).count(), 2);
}

#[tokio::test]
async fn a_second_process_reads_a_held_journal_through_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let (j, _) = open(&path);
    for e in success("a") {
        j.append(e).await.unwrap();
    }
    // While the journal is held, a direct open is refused with a clear error...
    let err = Journal::open(&path, JournalOptions::inspect()).unwrap_err();
    assert!(matches!(err, JournalError::Locked { .. }), "{err}");
    assert!(
        err.to_string().contains("in use by another process"),
        "{err}"
    );
    // ...and once the holder serves its socket, inspection goes through it.
    let server = remote::serve(j.clone()).await.unwrap();
    let access = JournalAccess::open(&path).unwrap();
    assert!(access.is_remote());
    let events = access.events(2).await.unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].as_ref().unwrap().seq, 2);
    let info = access.info().await.unwrap();
    assert_eq!(info.events, 4);
    let report = access
        .compact(&RetentionPolicy {
            max_age: Some(Duration::ZERO),
            max_bytes: None,
        })
        .await
        .unwrap();
    assert_eq!(report.jobs_removed, 1);
    assert_eq!(j.info().jobs, 0);
    server.abort();
}

#[test]
fn journal_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("j");
    let (_j, _) = Journal::open(&path, JournalOptions::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    for entry in std::fs::read_dir(&path).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", entry.path().display());
        }
    }
}

/// Compaction on a full disk: its write or flush fails, and the journal fails stop at once, as an
/// append's failed flush does (appends refused, `failure()` says why), rather than going on
/// with a store whose state it no longer knows. Needs root (a tmpfs).
#[tokio::test]
async fn a_compaction_that_cannot_write_fails_the_journal_stop() {
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = citadel_harness::tmpfs::Tmpfs::mount(&dir.path().join("disk"), "4m") else {
        return;
    };
    let (j, _) = open(&dir.path().join("disk/journal"));
    for n in 0..200 {
        for e in success(&format!("job-{n}")) {
            j.append(e).await.unwrap();
        }
    }
    disk.fill("filler");
    let every_settled_job = RetentionPolicy {
        max_age: Some(Duration::ZERO),
        max_bytes: None,
    };
    let compacted = j.compact(&every_settled_job);
    assert!(
        compacted.is_err(),
        "compaction wrote on a full disk: {compacted:?}"
    );
    let why = j
        .failure()
        .expect("the failed compaction fails the journal stop");
    assert!(!why.is_empty());
    let refused = j.append_buffered(received("late"));
    assert!(
        matches!(refused, Err(JournalError::Flush(_))),
        "{refused:?}"
    );
}
