//! Whether the chaos suite runs. It needs a Docker engine and the images of
//! `chaos/images/build.sh`; `scripts/test` builds them and sets `CITADEL_CHAOS=1`. Without that
//! a scenario prints `skipped: …` and passes, except under `CI=true`, where a suite that cannot
//! run is a failure and never a silent pass. This module only decides; it starts nothing.

use std::process::Command;

/// `true`: run the scenario. `false`: it was skipped (the reason is printed). Panics when the
/// suite must run (`CI=true` or `CITADEL_CHAOS=1`) but cannot.
pub fn gate(scenario: &str) -> bool {
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    let enabled = std::env::var("CITADEL_CHAOS").is_ok_and(|v| v == "1");
    if !enabled {
        let why = "CITADEL_CHAOS=1 is not set (./scripts/test builds the images and sets it)";
        if ci {
            panic!("chaos scenario {scenario}: CI=true but the suite is not enabled: {why}");
        }
        // Straight to the process's stderr: libtest captures `eprintln!` of a passing test.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped: chaos scenario {scenario}: {why}"
        );
        return false;
    }
    if let Err(why) = ready() {
        panic!("chaos scenario {scenario}: CITADEL_CHAOS=1 but {why}");
    }
    true
}

fn ready() -> Result<(), String> {
    let info = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .map_err(|e| format!("the docker command cannot run: {e}"))?;
    if !info.status.success() {
        return Err(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&info.stderr).trim()
        ));
    }
    for (name, tag) in [crate::REDIS_IMAGE, crate::NATS_IMAGE, crate::CITADEL_IMAGE] {
        let ok = Command::new("docker")
            .args(["image", "inspect", &format!("{name}:{tag}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Err(format!(
                "the image {name}:{tag} is missing: run chaos/images/build.sh"
            ));
        }
    }
    Ok(())
}
