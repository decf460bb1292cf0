//! Requirements on a control plane (docs/transports.md#routing): a job that requires a tag is
//! handed only to a node whose claims offer it, a job for one node only to that node, and a job
//! no node can meet stays queued, visible as such in `citadel jobs`.

use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::support::assert_ran_only;
use crate::support::plane::Plane;
use crate::support::worker::{eventually, Worker};

fn worker(p: &Plane, data: &std::path::Path, node: &str, manifest: &str) -> Worker {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(data.join("citadel.yaml"), manifest).unwrap();
    let transport = p.work_flags(&p.token);
    Worker::start_on(
        &transport.each_ref().map(String::as_str),
        data,
        &["--node-name", node],
    )
}

fn state(p: &Plane, id: &str) -> String {
    let j: Value = p.json("GET", &format!("/api/v1/jobs/{id}"), None);
    j["state"].as_str().unwrap_or("").to_string()
}

#[tokio::test]
async fn a_control_plane_hands_jobs_only_to_nodes_that_meet_their_requirements() {
    let dir = tempfile::tempdir().unwrap();
    let p = Plane::start(&dir.path().join("plane"));
    let a = worker(
        &p,
        &dir.path().join("a"),
        "node-a",
        "node:\n  tags: [lab-a]\n",
    );
    let b = worker(&p, &dir.path().join("b"), "node-b", "");
    p.submit(json!({"id": "unmet", "type": "echo", "requires": ["nobody-has-this"]}));
    for i in 0..3 {
        p.submit(json!({"id": format!("needs-a-{i}"), "type": "echo", "requires": ["lab-a"]}));
        p.submit(json!({"id": format!("for-b-{i}"), "type": "echo", "target_node": "node-b"}));
    }
    for i in 0..3 {
        for id in [format!("needs-a-{i}"), format!("for-b-{i}")] {
            eventually(Duration::from_secs(20), &format!("{id} succeeds"), || {
                let done = state(&p, &id) == "succeeded";
                async move { done }
            })
            .await;
        }
    }
    assert_ran_only(&a, "node-a", 3, "needs-a-");
    assert_ran_only(&b, "node-b", 3, "for-b-");
    assert_eq!(state(&p, "unmet"), "queued");
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["jobs", "ls", "--nexus", &p.url(), "--token", &p.token])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.starts_with("unmet")).unwrap_or("");
    assert!(
        line.contains("queued") && line.contains("needs nobody-has-this"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
