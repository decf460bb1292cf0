//! Integration tests of the Redis Streams transport against a real `redis-server` (started per
//! test on a free loopback port, see `citadel_harness::redis`). No mocks.

mod backlog;
mod bounded;
mod completion;
mod delivery;
mod events;
mod leases;
mod mends;
mod outage;
mod owner;
mod settle;

/// Calls of `command` Redis has run so far, from inside scripts too.
pub(crate) async fn calls(c: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    let prefix = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}
