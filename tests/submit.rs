//! `citadel submit` picks exactly one destination: two of `--nexus`, `--redis-url` and
//! `--nats-url` (or their environment variables) are refused with a clear error, and nothing is
//! sent anywhere.

use std::process::Output;

use crate::support::plane::citadel;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn two_destinations_on_the_command_line_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let out = citadel(data.path())
        .args(["submit", "--redis-url", "redis://127.0.0.1:1"])
        .args(["--nats-url", "nats://127.0.0.1:1", "echo", "msg=hi"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("a job goes to one place"), "{err}");
    assert!(
        err.contains("--redis-url") && err.contains("--nats-url"),
        "{err}"
    );
}

/// An environment variable left set from another shell must not silently win over a flag, nor the
/// flag over it: the user is told which two are set.
#[test]
fn a_control_plane_from_the_environment_and_a_broker_flag_are_refused() {
    let data = tempfile::tempdir().unwrap();
    let out = citadel(data.path())
        .env("CITADEL_NEXUS_URL", "http://127.0.0.1:1")
        .args(["submit", "--redis-url", "redis://127.0.0.1:1", "echo"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("CITADEL_NEXUS_URL"), "{err}");
    assert!(err.contains("--redis-url"), "{err}");
}
