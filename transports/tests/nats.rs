//! Integration tests of the NATS JetStream transport against a real `nats-server -js` (started
//! per test on a free loopback port with its own store, see `nats/harness.rs`). No mocks.

#[path = "nats/delivery.rs"]
mod delivery;
#[path = "nats/events.rs"]
mod events;
#[path = "nats/harness.rs"]
mod harness;
#[path = "nats/leases.rs"]
mod leases;
#[path = "nats/settle.rs"]
mod settle;
