//! `citadel work` against a real redis-server: the real binary as a child process, a producer
//! that writes entries exactly as docs/wire-format.md#job-entries and reads the events of §9.2. `worker/nats.rs` does
//! the same against a real nats-server.

#[path = "../transports/tests/redis/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "../transports/tests/nats/harness.rs"]
#[allow(dead_code)]
mod nats_harness;
#[path = "worker/support.rs"]
mod support;

#[path = "worker/lifecycle.rs"]
mod lifecycle;
#[path = "worker/llm.rs"]
mod llm;
#[path = "worker/nats.rs"]
mod nats;
#[path = "worker/recovery.rs"]
mod recovery;
