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

/// The one job `next(1)` hands out within 5 s.
pub(crate) async fn one(src: &citadel_transports::RedisSource) -> citadel_transports::Incoming {
    let mut got =
        citadel_harness::redis::next_within(src, 1, std::time::Duration::from_secs(5)).await;
    assert_eq!(got.len(), 1, "one job at a time");
    got.remove(0)
}

/// Calls of `command` Redis has run so far, from inside scripts too.
pub(crate) async fn calls(c: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    commandstat(&commandstats(c).await, command, "calls")
}

/// `INFO commandstats`.
pub(crate) async fn commandstats(c: &mut redis::aio::MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap()
}

/// One figure (`calls`, `failed_calls`, …) of `command` in `INFO commandstats`; 0 when Redis
/// has not run it.
pub(crate) fn commandstat(info: &str, command: &str, figure: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:");
    info.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .and_then(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix(figure)?.strip_prefix('='))
        })
        .map_or(0, |n| n.parse().unwrap())
}
