//! The `citadel` binary: parses the command line and reports a failure once, with its causes.

use std::process::ExitCode;

fn main() -> ExitCode {
    match citadel::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
