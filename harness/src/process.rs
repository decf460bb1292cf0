//! Starting the Debian server binaries the harness runs: quiet (their output would drown a
//! test's), with an error that says which package to install when the binary is missing. It
//! never waits for a server to be ready: each launcher knows how its server greets.

use std::process::{Child, Command, Stdio};

/// Spawns `cmd` with its output discarded; a failure names `package` (`apt-get install -y …`).
pub(crate) fn spawn_quiet(cmd: &mut Command, package: &str) -> std::io::Result<Child> {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            let program = cmd.get_program().to_string_lossy().into_owned();
            std::io::Error::new(
                e.kind(),
                format!("starting {program} (apt-get install -y {package}): {e}"),
            )
        })
}
