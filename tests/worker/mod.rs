//! `citadel work` against a real redis-server: the real binary as a child process, a producer
//! that writes entries exactly as docs/wire-format.md#job-entries and reads the events of docs/wire-format.md#job-events. `worker/nats.rs` does
//! the same against a real nats-server.

mod faults;
mod lifecycle;
mod llm;
mod nats;
mod overlap;
mod recovery;
