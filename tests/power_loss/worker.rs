//! End to end: a real `citadel work` whose journal folder is a LazyFS mount works through Redis
//! jobs (one in 20 with a 200 KB payload that its `echo` result repeats: blob-sized events),
//! is SIGKILLed, and the unsynced cache is dropped. Every job whose `end` Redis saw — published
//! only after the job's success and its ack were appended durably, and before the ack reached
//! Redis — has both in the surviving journal. (The journal's socket lives beside the journal
//! folder, outside the mount.)

use std::time::Duration;

use citadel_harness::redis::Server;
use citadel_journal::{Journal, JournalOptions};
use citadel_transports::JobId;

use super::lazyfs::LazyFs;
use crate::support::worker::{events, submit, Worker};

const JOBS: usize = 4000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_announced_success_survives_power_loss_of_a_worker() {
    if std::env::var(super::CHILD_ENV).is_ok() {
        return;
    }
    let test = "every_announced_success_survives_power_loss_of_a_worker";
    let Some(mut fs) = LazyFs::mount(test) else {
        return;
    };
    let server = Server::start().await;
    let mut c = server.conn().await;
    let data = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(fs.path(), data.path().join("journal")).unwrap();
    let big = "z".repeat(200_000);
    let ids: Vec<String> = (0..JOBS).map(|i| format!("pl-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let text = if i % 20 == 0 { big.as_str() } else { "small" };
        submit(&mut c, id, "echo", serde_json::json!({ "text": text })).await;
    }
    let mut worker = Worker::start(&server, data.path(), &["--concurrency", "16"]);
    // Kill mid-stream: once some jobs are done (however slow the machine), well before the last.
    let started = std::time::Instant::now();
    while !events(&mut c, &ids[200])
        .await
        .iter()
        .any(|e| e["type"] == "end")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the worker finished no job\n{}",
            worker.logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    worker.kill9();
    fs.clear_cache();
    fs.remount();

    let mut announced = Vec::new();
    for id in &ids {
        if events(&mut c, id).await.iter().any(|e| e["type"] == "end") {
            announced.push(id.clone());
        }
    }
    let (journal, report) =
        Journal::open(data.path().join("journal"), JournalOptions::inspect()).unwrap();
    let lost: Vec<&String> = announced
        .iter()
        .filter(|id| {
            let names: Vec<&str> = journal
                .events_of(&JobId::new(id.to_string()).unwrap())
                .unwrap()
                .iter()
                .map(|e| e.event.name())
                .collect();
            !(names.contains(&"succeeded") && names.contains(&"acked"))
        })
        .collect();
    eprintln!(
        "worker power loss: {} jobs announced done, {} without their success in the journal, \
         {} damaged entries",
        announced.len(),
        lost.len(),
        report.damaged.len()
    );
    assert!(report.damaged.is_empty(), "damaged: {:?}", report.damaged);
    assert!(
        !announced.is_empty(),
        "the worker finished no job\n{}",
        worker.logs()
    );
    assert!(
        lost.is_empty(),
        "lost successes: {:?}",
        &lost[..lost.len().min(10)]
    );
}
