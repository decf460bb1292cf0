//! Power-loss tests on LazyFS ([`lazyfs`]): a child process (this test binary, re-run with
//! [`CHILD_ENV`] set) writes through a store and prints every write that was answered; the parent
//! SIGKILLs it at a varying moment, drops LazyFS's unsynced cache (the power failure), re-mounts
//! and checks that every answered write is there. One suite per store: the journal
//! ([`journal`]) and the control plane's store ([`store`]); and end to end, a real worker
//! ([`worker`]) and a real control plane's settlements ([`settle`]).

mod journal;
mod lazyfs;
mod settle;
mod store;
mod worker;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Set in the child: `<suite> <folder>`.
const CHILD_ENV: &str = "CITADEL_POWER_LOSS_CHILD";

/// The child's body; a no-op unless the parent started this binary with [`CHILD_ENV`].
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (suite, dir) = spec.split_once(' ').expect("<suite> <folder>");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    match suite {
        "journal" => rt.block_on(journal::write(Path::new(dir))),
        "store" => rt.block_on(store::write(Path::new(dir))),
        other => panic!("unknown power-loss suite {other}"),
    }
}

/// Runs the child writing into `dir`, SIGKILLs it `kill_after` after it is ready, and returns
/// the lines it printed that start with `ok `.
fn run_child(suite: &str, dir: &Path, kill_after: Duration) -> Vec<String> {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "power_loss::child", "--nocapture"])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, format!("{suite} {}", dir.display()));
    citadel_harness::child::run_and_kill(cmd, &format!("the {suite} writer"), kill_after)
}

/// A kill moment that differs from round to round (between 150 ms and 1.3 s).
fn kill_after(round: usize) -> Duration {
    Duration::from_millis(150 + (round as u64 * 389) % 1150)
}
