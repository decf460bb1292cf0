//! Integration tests of the Redis Streams transport against a real `redis-server` (started per
//! test on a free loopback port, see `redis/harness.rs`). No mocks.

#[path = "redis/delivery.rs"]
mod delivery;
#[path = "redis/events.rs"]
mod events;
#[path = "redis/harness.rs"]
mod harness;
#[path = "redis/leases.rs"]
mod leases;
#[path = "redis/settle.rs"]
mod settle;
