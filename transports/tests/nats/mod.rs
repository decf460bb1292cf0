//! Integration tests of the NATS JetStream transport against a real `nats-server -js` (started
//! per test on a free loopback port with its own store, see `citadel_harness::nats`). No mocks.

mod completion;
mod delivery;
mod events;
mod leases;
mod restart;
mod settle;
