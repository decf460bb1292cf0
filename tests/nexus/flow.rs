//! The zero-config flow of a fresh machine: `citadel work` with nothing configured serves an
//! embedded control plane, and `citadel submit --wait` finds it and prints the result.

use std::process::Stdio;
use std::time::Duration;

use crate::support::plane::*;

#[test]
fn work_with_nothing_configured_serves_jobs_that_submit_waits_for() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = std::fs::File::create(tmp.path().join("work.log")).unwrap();
    let mut worker = citadel(&data)
        .args(["--log", "citadel=debug,warn", "work"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let logs = || std::fs::read_to_string(tmp.path().join("work.log")).unwrap_or_default();
    eventually(
        Duration::from_secs(20),
        "the embedded control plane listens",
        || logs().contains("citadel submit --wait echo msg=hi") && logs().contains("working"),
    );
    assert!(
        logs().contains("embedded control plane on http://127.0.0.1:"),
        "{}",
        logs()
    );

    let out = citadel(&data)
        .args(["submit", "--wait", "--timeout", "30s", "echo", "msg=hi"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"msg\":\"hi\"}\n");

    // A failing job: the events of each attempt stream by, and the exit status says it failed.
    let out = citadel(&data)
        .args([
            "submit",
            "--wait",
            "--timeout",
            "30s",
            "fail",
            "maxAttempts:=1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("deliberate failure"));

    // The control plane's limit, given at submit, is the worker's too: one attempt, not three.
    let out = citadel(&data)
        .args([
            "submit",
            "--wait",
            "--timeout",
            "30s",
            "--max-attempts",
            "1",
            "fail",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());

    let out = citadel(&data)
        .args(["jobs", "ls", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let states: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["dead", "dead", "succeeded"]);
    assert_eq!(
        v["jobs"][0]["attempts"], 1,
        "--max-attempts 1: {}",
        v["jobs"][0]
    );

    let pid = rustix::process::Pid::from_raw(worker.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = worker.try_wait().unwrap() {
            assert!(status.success(), "{}", logs());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the worker did not stop\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_to_redis_writes_the_wire_format_and_waits_for_the_events() {
    let server = citadel_harness::redis::Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut worker = citadel(&data)
        .args([
            "work",
            "--node-name",
            "node-r",
            "--redis-url",
            &server.url(),
            // The entry stays after its ack, for the check of what the producer wrote.
            "--keep-acked",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = citadel(&data)
        .args([
            "submit",
            "--redis-url",
            &server.url(),
            "--wait",
            "--timeout",
            "30s",
            "--id",
            "r-1",
            "echo",
            "msg=hi",
        ])
        .output()
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "{\"msg\":\"hi\"}\n");
    // The entry a producer of the Go platform would have written (docs/wire-format.md#job-entries).
    let mut c = server.conn().await;
    let entries = citadel_harness::redis::range(&mut c, citadel_harness::redis::STREAM).await;
    let fields: std::collections::HashMap<String, String> = entries[0].1.iter().cloned().collect();
    assert_eq!(fields["jobId"], "r-1");
    assert_eq!(fields["type"], "echo");
    assert_eq!(fields["payload"], r#"{"msg":"hi"}"#);
    assert!(humantime::parse_rfc3339(&fields["enqueuedAt"]).is_ok());
}
