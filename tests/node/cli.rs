//! Running the `citadel` binary on a data directory, and what it printed.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::plane::BIN;

/// `citadel` on `data`, with the environment of this machine's user cleared of citadel settings.
pub fn citadel(data: &Path) -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("CITADEL_") {
            c.env_remove(k);
        }
    }
    c.arg("--data-dir").arg(data);
    c
}

/// Runs and returns (success, stdout, stderr).
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("running citadel");
    (
        status.success(),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

pub fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}
