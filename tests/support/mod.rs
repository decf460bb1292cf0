//! What several suites share that runs this package's own `citadel` binary (so it cannot live in
//! `citadel-harness`): the control plane as a child process with a raw HTTP client, and a
//! `citadel work` child process watched through Redis.

pub mod plane;
pub mod worker;
