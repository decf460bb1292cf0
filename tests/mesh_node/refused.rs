//! A node the control plane refuses on the mesh keeps taking jobs, and says why its mesh is not
//! up; a node without the mesh, or without a running worker, says so plainly.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_wrong_credential_is_refused_and_keeps_working() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    // Jobs come with the admin token; the mesh uses the node's own credential, which is wrong.
    let node = Node::with_credential(
        &plane,
        tmp.path(),
        "node-x",
        "acme",
        "not-a-credential",
        &plane.token,
    );
    let worker = node.work(&plane, &[]);
    eventually(Duration::from_secs(60), "the mesh refused", || {
        let v = node.cli(&["mesh", "status", "--json"]).stdout;
        let v: Value = serde_json::from_slice(&v).unwrap_or(Value::Null);
        v["state"] == "starting" && v["error"].as_str().is_some_and(|e| e.contains("401"))
    });
    assert!(!worker.logs().contains("citadel: mesh 100."));
    assert!(
        !worker.logs().contains("not-a-credential"),
        "the credential was logged"
    );
    let id = plane.submit(json!({"type": "echo", "payload": {"msg": "hi"}}));
    eventually(Duration::from_secs(30), "the job done", || {
        plane.json("GET", &format!("/api/v1/jobs/{id}"), None)["state"] == "succeeded"
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_says_when_the_mesh_is_off_or_no_worker_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    let node = Node::enrolled(&plane, tmp.path(), "node-off", "acme");
    let out = node.cli(&["mesh", "status"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no citadel worker is running"), "{err}");
    let worker = node.work(&plane, &["--no-mesh"]);
    eventually(Duration::from_secs(60), "the worker running", || {
        worker.logs().contains("status on")
    });
    for args in [&["mesh", "status"][..], &["mesh", "ping", "node-a"][..]] {
        let out = node.cli(args);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("the mesh is off"), "{args:?}: {err}");
    }
    assert!(!worker.logs().contains("citadel: mesh"));
}
