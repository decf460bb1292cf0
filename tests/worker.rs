//! `citadel work` against a real redis-server: the real binary as a child process, a producer
//! that writes entries exactly as SPEC §9.1 and reads the events of §9.2.

#[path = "../transports/tests/redis/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "worker/support.rs"]
mod support;

#[path = "worker/lifecycle.rs"]
mod lifecycle;
#[path = "worker/llm.rs"]
mod llm;
#[path = "worker/recovery.rs"]
mod recovery;
