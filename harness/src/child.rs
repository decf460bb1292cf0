//! A writer in a child process, killed on purpose: the crash and power-loss tests re-run their
//! own test binary as a child that prints `ready`, then one `ok …` line per write it saw
//! acknowledged. [`run_and_kill`] waits for `ready`, lets it write, SIGKILLs it and returns the
//! acknowledged lines. Test scaffolding only: it never decides what a test checks.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// How long a child may take to print `ready`.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// Starts `cmd` (its stdout piped, stderr discarded), waits for its `ready` line, lets it run
/// `kill_after`, SIGKILLs it and returns the lines it printed that start with `ok `. Panics,
/// naming `what`, when the child never says `ready`.
pub fn run_and_kill(mut cmd: Command, what: &str, kill_after: Duration) -> Vec<String> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    loop {
        let left = READY_WITHIN.saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) if line == "ready" => break,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!("{what} never said ready within {READY_WITHIN:?}");
            }
            Err(RecvTimeoutError::Disconnected) => {
                panic!("{what} ended before it said ready: {:?}", child.wait())
            }
        }
    }
    std::thread::sleep(kill_after);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    reader.join().expect("the child's reader");
    rx.try_iter().filter(|l| l.starts_with("ok ")).collect()
}
