//! The `citadel` binary: parses the command line and reports a failure once, with its causes.
//! Output to a pipe its reader has closed (`citadel journal export | head`) ends the process
//! quietly and successfully, as it does for other Unix tools.

use std::process::ExitCode;

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    match citadel::cli::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Rust ignores SIGPIPE, so a write to a closed pipe fails with EPIPE, and `println!` turns that
/// failure into a panic. Restoring the default signal disposition needs `unsafe`, which the
/// workspace forbids; instead, this hook recognises exactly that panic (the standard library's
/// message for a failed stdout print, with the EPIPE error) and exits with success, the reader
/// having taken what it wanted. Every other panic goes to the default hook. Writers that return
/// the error instead (`journal export`) end quietly on `ErrorKind::BrokenPipe` themselves.
fn exit_quietly_on_closed_stdout() {
    let epipe = std::io::Error::from_raw_os_error(rustix::io::Errno::PIPE.raw_os_error());
    let closed = format!("failed printing to stdout: {epipe}");
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied());
        if message == Some(closed.as_str()) {
            std::process::exit(0);
        }
        default(info);
    }));
}
