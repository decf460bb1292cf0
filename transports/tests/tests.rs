//! The integration tests of `citadel-transports`, in one test binary (linking is most of an
//! incremental build): each transport's suite is a module, run against its real server started
//! per test by `citadel-harness` on a free loopback port. No mocks.

mod nats;
mod redis;
