//! The journal under power loss: 32 concurrent writers append whole job lifecycles, one job in
//! 20 with a 1 MiB result (far above sled's 128 KiB blob threshold); after each SIGKILL and
//! clear-cache every append that had returned is there, with its job and kind, readable.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use citadel_journal::{EventKind, Journal, JournalOptions, NewEvent};
use citadel_transports::{Job, JobId};

use super::lazyfs::LazyFs;

const ROUNDS: usize = 6;
const WRITERS: usize = 32;

/// The child: appends until killed, printing `ok <seq> <job> <kind>` for every returned append.
pub(super) async fn write(dir: &Path) {
    let (journal, _) = Journal::open(dir, JournalOptions::default()).unwrap();
    let out = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(out.lock().unwrap(), "\nready").unwrap();
    let big = "x".repeat(1 << 20);
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (journal, out, big) = (journal.clone(), out.clone(), big.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let id = JobId::new(format!("w{w}-{i}-{}", std::process::id())).unwrap();
                let result = if (w + i) % 20 == 0 {
                    serde_json::json!(big)
                } else {
                    serde_json::json!(i)
                };
                for event in lifecycle(&id, result) {
                    let name = event.name();
                    let stored = journal
                        .append(NewEvent::new(id.clone(), "power-loss", event))
                        .await
                        .unwrap();
                    let mut out = out.lock().unwrap();
                    writeln!(out, "ok {} {id} {name}", stored.seq).unwrap();
                    out.flush().unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn lifecycle(id: &JobId, result: serde_json::Value) -> [EventKind; 4] {
    let job = Job {
        id: id.clone(),
        job_type: "noop".into(),
        payload: serde_json::json!({}),
        ray_id: None,
        enqueued_at: None,
        attempt: 1,
        source: "power-loss".into(),
    };
    [
        EventKind::Received { job },
        EventKind::Started { attempt: 1 },
        EventKind::Succeeded { result },
        EventKind::Acked,
    ]
}

#[test]
fn every_returned_append_survives_power_loss() {
    if std::env::var(super::CHILD_ENV).is_ok() {
        return;
    }
    let Some(mut fs) = LazyFs::mount("every_returned_append_survives_power_loss") else {
        return;
    };
    let dir = fs.path().join("journal");
    let (mut acked, mut lost) = (0, 0);
    for round in 0..ROUNDS {
        let lines = super::run_child("journal", &dir, super::kill_after(round));
        fs.clear_cache();
        fs.remount();
        let missing = check(&dir, &lines);
        eprintln!(
            "power loss round {round}: {} appends returned, {} missing",
            lines.len(),
            missing.len()
        );
        if let Some(first) = missing.first() {
            eprintln!("  first missing: {first}");
        }
        acked += lines.len();
        lost += missing.len();
    }
    eprintln!("journal power loss: {ROUNDS} rounds, {acked} returned appends, {lost} lost");
    assert!(acked > 0, "the writer confirmed no appends at all");
    assert_eq!(lost, 0, "{lost} of {acked} returned appends were lost");
}

/// Opens the journal as it survived and returns the printed appends that are not in it.
fn check(dir: &Path, lines: &[String]) -> Vec<String> {
    let (journal, report) = Journal::open(dir, JournalOptions::inspect()).unwrap();
    assert!(report.damaged.is_empty(), "damaged: {:?}", report.damaged);
    let mut stored = std::collections::HashMap::new();
    let mut last = 0;
    for e in journal.events(0) {
        let e = e.unwrap().unwrap();
        assert!(e.seq > last, "events out of order: {} after {last}", e.seq);
        last = e.seq;
        stored.insert(e.seq, (e.job_id.to_string(), e.event.name()));
    }
    lines
        .iter()
        .filter(|line| {
            let mut parts = line.split(' ').skip(1);
            let (Some(seq), Some(job), Some(kind)) = (parts.next(), parts.next(), parts.next())
            else {
                return false; // a line cut by the kill
            };
            let Ok(seq) = seq.parse::<u64>() else {
                return false;
            };
            stored.get(&seq).map(|(j, k)| (j.as_str(), *k)) != Some((job, kind))
        })
        .cloned()
        .collect()
}
