//! The crash test: a child process appends durably from many tasks and reports every append that
//! returned; the parent SIGKILLs it at a random moment, reopens the journal and checks that every
//! reported event is there, intact, and that the journal opens without damage. Repeated.
//!
//! The child is this same test binary, re-run with `CRASH_WRITER_DIR` set (see `crash_writer`).

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};

const ENV: &str = "CRASH_WRITER_DIR";
const ROUNDS: usize = 12;

/// The child's body: runs only when the parent started this binary with `CRASH_WRITER_DIR`.
#[test]
fn crash_writer() {
    let Ok(dir) = std::env::var(ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (journal, _) = Journal::open(&dir, JournalOptions::default()).unwrap();
        let out = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
        writeln!(out.lock().unwrap(), "\nready").unwrap();
        let mut tasks = Vec::new();
        for w in 0..48 {
            let (journal, out) = (journal.clone(), out.clone());
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let job_id = JobId::new(format!("w{w}-{i}-{}", std::process::id())).unwrap();
                    let job = Job::first_delivery(
                        job_id.clone(),
                        "noop",
                        serde_json::json!({"w": w, "i": i}),
                        "crash",
                    );
                    for event in [
                        EventKind::Received { job },
                        EventKind::Started { attempt: 1 },
                        EventKind::Succeeded {
                            result: serde_json::json!(i),
                        },
                        EventKind::Acked,
                    ] {
                        let name = event.name();
                        let stored = journal
                            .append(NewEvent::new(job_id.clone(), "crash", event))
                            .await
                            .unwrap();
                        let mut out = out.lock().unwrap();
                        writeln!(out, "ok {} {} {}", stored.seq, job_id, name).unwrap();
                        out.flush().unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn every_returned_append_survives_sigkill() {
    if std::env::var(ENV).is_ok() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let exe = std::env::current_exe().unwrap();
    let mut total = 0usize;
    for round in 0..ROUNDS {
        let mut cmd = Command::new(&exe);
        cmd.args([
            "--exact",
            "crash_writer",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(ENV, &path);
        // Kill somewhere between 20 and 320 ms into the writing.
        let kill_after = Duration::from_millis(20 + (round as u64 * 97) % 300);
        let lines = citadel_harness::child::run_and_kill(
            cmd,
            &format!("round {round}'s writer"),
            kill_after,
        );

        let (journal, report) = Journal::open(&path, JournalOptions::inspect()).unwrap();
        assert!(
            report.damaged.is_empty(),
            "round {round}: damaged entries {:?}",
            report.damaged
        );
        let stored: std::collections::HashMap<u64, (String, &'static str)> = journal
            .events(0)
            .map(|e| {
                let e = e.unwrap().unwrap();
                (e.seq, (e.job_id.to_string(), e.event.name()))
            })
            .collect();
        let mut confirmed = 0;
        for line in &lines {
            let mut parts = line.split(' ').skip(1);
            let (Some(seq), Some(job), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                continue; // a line cut by the kill
            };
            let Ok(seq) = seq.parse::<u64>() else {
                continue;
            };
            let got = stored.get(&seq);
            assert_eq!(
                got.map(|(j, k)| (j.as_str(), *k)),
                Some((job, kind)),
                "round {round}: append {seq} returned but is not in the journal"
            );
            confirmed += 1;
        }
        total += confirmed;
        drop(journal);
    }
    eprintln!("crash test: {ROUNDS} SIGKILLs, {total} confirmed appends all present");
    assert!(total > 0, "the writer confirmed no appends at all");
}
