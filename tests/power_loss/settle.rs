//! The control plane end to end under power loss: a real `citadel nexus serve` whose data folder
//! is a LazyFS mount hands out jobs that workers (threads here) settle with their events in the
//! settlement's body (`start`, then `end`); the plane is SIGKILLed mid-stream and the unsynced
//! cache dropped. Every settlement answered 200 has, in the surviving store, its job succeeded
//! with the result and both events in order. The same again with several jobs' events, then
//! their settlements, each sent as one batch (`POST /api/v1/jobs/batch`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use citadel_nexus::store::{QueueState, Store};
use serde_json::{json, Value};

use super::lazyfs::LazyFs;
use crate::support::plane::Plane;

const ROUNDS: usize = 3;
const JOBS: usize = 600;
const WORKERS: usize = 8;

/// One worker: claims a job at a time and settles it with its events until told to stop or the
/// plane is gone; records each job whose settlement was answered 200.
fn work(p: &Plane, w: usize, stop: &AtomicBool, answered: &Mutex<Vec<String>>) {
    let claim = json!({"worker": format!("w{w}"), "max": 1}).to_string();
    while !stop.load(Ordering::SeqCst) {
        let r = p.call("POST", "/api/v1/jobs/claim", Some(&claim));
        let Some(job) = (r.status == 200).then(|| r.json()["jobs"][0].clone()) else {
            return;
        };
        let (Some(id), Some(lease)) = (job["id"].as_str(), job["lease"]["id"].as_str()) else {
            return; // nothing left to claim
        };
        let event = |ty: &str, data: Value| json!({"type": ty, "jobId": id, "data": data});
        let body = json!({
            "lease_id": lease,
            "action": "ack",
            "outcome": "end",
            "events": [event("start", json!({"message": "running"}))],
            "event": event("end", json!({"result": {"of": id}})),
        });
        let path = format!("/api/v1/jobs/{id}/settle");
        if p.call("POST", &path, Some(&body.to_string())).status == 200 {
            answered.lock().unwrap().push(id.to_string());
        }
    }
}

/// One worker sending batches: claims up to four jobs, posts their `start` and `end` in one
/// batch, then their settlements in another; records each job whose settlement was answered 200.
fn work_batched(p: &Plane, w: usize, stop: &AtomicBool, answered: &Mutex<Vec<String>>) {
    let claim = json!({"worker": format!("w{w}"), "max": 4}).to_string();
    while !stop.load(Ordering::SeqCst) {
        let r = p.call("POST", "/api/v1/jobs/claim", Some(&claim));
        let jobs = if r.status == 200 {
            r.json()["jobs"].clone()
        } else {
            return;
        };
        let held: Vec<(String, String)> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| Some((j["id"].as_str()?.into(), j["lease"]["id"].as_str()?.into())))
            .collect();
        if held.is_empty() {
            return; // nothing left to claim
        }
        let event =
            |ty: &str, id: &str, data: Value| json!({"type": ty, "jobId": id, "data": data});
        let events: Vec<Value> = held
            .iter()
            .map(|(id, lease)| {
                let start = event("start", id, json!({"message": "running"}));
                let end = event("end", id, json!({"result": {"of": id}}));
                json!({"op": "events", "job": id, "lease_id": lease, "events": [start, end]})
            })
            .collect();
        let settles: Vec<Value> = held
            .iter()
            .map(|(id, lease)| {
                let settle = json!({"lease_id": lease, "action": "ack", "outcome": "end"});
                json!({"op": "settle", "job": id, "settle": settle})
            })
            .collect();
        for ops in [events, settles.clone()] {
            let r = p.call(
                "POST",
                "/api/v1/jobs/batch",
                Some(&json!({"ops": ops}).to_string()),
            );
            if r.status != 200 {
                return;
            }
            let results = r.json()["results"].clone();
            if ops[0]["op"] == "settle" {
                let mut answered = answered.lock().unwrap();
                for ((id, _), res) in held.iter().zip(results.as_array().unwrap()) {
                    if res["status"] == 200 {
                        answered.push(id.clone());
                    }
                }
            }
        }
    }
}

type Work = fn(&Plane, usize, &AtomicBool, &Mutex<Vec<String>>);

/// Runs the workers against a plane on `dir` for `kill_after`, then SIGKILLs the plane.
fn round(dir: &std::path::Path, kill_after: Duration, work: Work) -> Vec<String> {
    let mut p = Plane::start(dir);
    for i in 0..JOBS {
        p.submit(json!({"type": "noop", "payload": {"i": i}}));
    }
    let stop = AtomicBool::new(false);
    let answered = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let (p, stop, answered) = (&p, &stop, &answered);
                // A request cut by the kill panics in the raw client: that worker just ends.
                s.spawn(move || {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        work(p, w, stop, answered)
                    }));
                })
            })
            .collect();
        std::thread::sleep(kill_after);
        let pid = p.pid().expect("the plane runs").to_string();
        let killed = std::process::Command::new("kill")
            .args(["-9", &pid])
            .status();
        assert!(killed.unwrap().success(), "could not SIGKILL the plane");
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
    });
    p.kill9(); // reaps the child
    answered.into_inner().unwrap()
}

/// Why answered job `id` is not as its settlement left it in `store`, if it is not.
fn damage(store: &Store, id: &str) -> Option<String> {
    let r = match store.get(id) {
        Ok(r) => r,
        Err(e) => return Some(format!("{id}: {e}")),
    };
    if r.state != QueueState::Succeeded || r.result != Some(json!({"of": id})) {
        return Some(format!("{id}: {:?} with result {:?}", r.state, r.result));
    }
    let events = store.events_from(id, 0).unwrap();
    let types: Vec<String> = events
        .iter()
        .map(|(_, e)| serde_json::from_str::<Value>(e).unwrap()["type"].to_string())
        .collect();
    (types != ["\"start\"", "\"end\""]).then(|| format!("{id}: events {types:?}"))
}

#[test]
fn every_answered_settlement_and_its_events_survive_power_loss() {
    survives(
        "every_answered_settlement_and_its_events_survive_power_loss",
        work,
    );
}

#[test]
fn every_answered_batch_and_its_events_survive_power_loss() {
    survives(
        "every_answered_batch_and_its_events_survive_power_loss",
        work_batched,
    );
}

/// Rounds of `work` on a LazyFS mount named `name`, the plane killed and the cache dropped in
/// each; every answered settlement must be found whole.
fn survives(name: &str, work: Work) {
    if std::env::var(super::CHILD_ENV).is_ok() {
        return;
    }
    let Some(mut fs) = LazyFs::mount(name) else {
        return;
    };
    let (mut total, mut lost) = (0, Vec::new());
    for r in 0..ROUNDS {
        let dir = fs.path().join(format!("plane-{r}"));
        let answered = round(&dir, super::kill_after(r + 1), work);
        fs.clear_cache();
        fs.remount();
        let store = Store::open(&dir.join("db")).unwrap();
        let damaged: Vec<String> = answered
            .iter()
            .filter_map(|id| damage(&store, id))
            .collect();
        eprintln!(
            "plane power loss round {r}: {} settlements answered, {} damaged",
            answered.len(),
            damaged.len()
        );
        total += answered.len();
        lost.extend(damaged);
    }
    assert!(total > 0, "the plane answered no settlement at all");
    assert!(
        lost.is_empty(),
        "{} of {total} answered settlements damaged: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
}
