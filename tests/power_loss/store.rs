//! The control plane's store under power loss: concurrent submits, each answered only after
//! [`Store::flush`] (as the API does); after each SIGKILL and clear-cache every answered submit is
//! still a job of the store.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

use citadel_nexus::store::{NewJob, Store};

use super::lazyfs::LazyFs;

const ROUNDS: usize = 4;
const WRITERS: usize = 16;

/// The child: submits until killed, printing `ok <id>` for every submit that was flushed.
pub(super) async fn write(dir: &Path) {
    let store = Arc::new(Store::open(dir).unwrap());
    let out = Arc::new(Mutex::new(std::io::stdout()));
    writeln!(out.lock().unwrap(), "\nready").unwrap();
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        let (store, out) = (store.clone(), out.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let mut payload = serde_json::Map::new();
                payload.insert("text".into(), serde_json::json!("y".repeat(200 * (i % 8))));
                let job = store
                    .submit(NewJob {
                        id: Some(format!("w{w}-{i}-{}", std::process::id())),
                        job_type: "noop".into(),
                        payload,
                        ray_id: None,
                        max_attempts: None,
                        org: None,
                        requires: Vec::new(),
                        target_node: None,
                    })
                    .unwrap();
                store.flush().await.unwrap();
                writeln!(out.lock().unwrap(), "ok {}", job.id).unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[test]
fn every_answered_submit_survives_power_loss() {
    if std::env::var(super::CHILD_ENV).is_ok() {
        return;
    }
    let Some(mut fs) = LazyFs::mount("every_answered_submit_survives_power_loss") else {
        return;
    };
    let dir = fs.path().join("nexus");
    let (mut answered, mut lost) = (0, 0);
    for round in 0..ROUNDS {
        let lines = super::run_child("store", &dir, super::kill_after(round));
        fs.clear_cache();
        fs.remount();
        let store = Store::open(&dir).unwrap();
        let missing: Vec<&String> = lines
            .iter()
            .filter(|l| {
                let id = l.trim_start_matches("ok ");
                !id.is_empty() && store.get(id).is_err()
            })
            .collect();
        eprintln!(
            "store power loss round {round}: {} submits answered, {} missing",
            lines.len(),
            missing.len()
        );
        answered += lines.len();
        lost += missing.len();
    }
    eprintln!("store power loss: {ROUNDS} rounds, {answered} answered submits, {lost} lost");
    assert!(answered > 0, "the writer answered no submit at all");
    assert_eq!(lost, 0, "{lost} of {answered} answered submits were lost");
}
