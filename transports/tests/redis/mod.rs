//! Integration tests of the Redis Streams transport against a real `redis-server` (started per
//! test on a free loopback port, see `citadel_harness::redis`). No mocks.

mod bounded;
mod completion;
mod delivery;
mod events;
mod leases;
mod mends;
mod outage;
mod owner;
mod settle;
