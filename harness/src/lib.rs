//! The real servers and stand-ins that citadel's tests and `citadel bench` start, all on loopback
//! and all stopped when dropped: a throwaway `redis-server` and `nats-server -js`
//! ([`redis::LocalRedis`], [`nats::LocalNats`]) with the producer-side helpers the tests use to
//! write jobs in the wire format (docs/wire-format.md#job-entries) and read what the worker wrote
//! back, a stand-in inference engine ([`engine::FakeEngine`]), a TCP proxy a test can cut to
//! partition a client from a server ([`proxy::Proxy`]), and a writer child killed on purpose
//! ([`child::run_and_kill`]). Test scaffolding only: it never
//! touches a server the user runs, never stands in for the worker's own code, and no product
//! crate uses it outside `citadel bench`.

pub mod child;
pub mod engine;
pub mod nats;
mod process;
pub mod proxy;
pub mod redis;
pub mod tmpfs;
