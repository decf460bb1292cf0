//! `citadel submit --tag` and `--node` on Redis: the job lands on the tag's or the node's stream
//! (docs/transports.md#routing) and runs only on the node that matches.

use std::process::Command;

use citadel_harness::redis::Server;

use super::support::{assert_ran_only, worker};

fn submit(server: &Server, route: &[&str], id: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["submit", "--redis-url", &server.url(), "--id", id, "--wait"])
        .args(["--timeout", "20s"])
        .args(route)
        .args(["echo", "text=hi"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "submit {route:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn submit_by_tag_or_node_reaches_only_the_matching_node() {
    let server = Server::start().await;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = worker(
        &server,
        da.path(),
        "node-a",
        "node:\n  tags: [lab-a]\n",
        &[],
    );
    let b = worker(&server, db.path(), "node-b", "", &[]);
    for i in 0..3 {
        submit(&server, &["--tag", "lab-a"], &format!("tagged-{i}"));
        submit(&server, &["--node", "node-b"], &format!("for-b-{i}"));
    }
    assert_ran_only(&a, "node-a", 3, "tagged-");
    assert_ran_only(&b, "node-b", 3, "for-b-");
}
