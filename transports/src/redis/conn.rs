//! Connections to Redis and the translation of its errors. This module owns how we connect
//! (two managed connections: one for the blocking reader, one for everything else, both
//! reconnecting on their own) and which failures are worth retrying; it must never hold job
//! state.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, RetryMethod};
use tracing::debug;

use super::config::RedisConfig;
use crate::source::SourceError;

/// Classifies a Redis error: lost or refused connections and timeouts are `Unavailable`,
/// transient server refusals (`LOADING`, `TRYAGAIN`, `NOGROUP` after a restart, `UNBLOCKED` when
/// the stream vanished under a blocked read) are `Busy`,
/// the rest is `Broker`.
pub(crate) fn map_err(e: RedisError) -> SourceError {
    let text = e.to_string();
    if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
    {
        return SourceError::Unavailable(text);
    }
    if is_nogroup(&e) {
        return SourceError::Busy(text);
    }
    match e.retry_method() {
        RetryMethod::WaitAndRetry | RetryMethod::RetryImmediately => SourceError::Busy(text),
        _ => SourceError::Broker(text),
    }
}

pub(crate) fn is_nogroup(e: &RedisError) -> bool {
    // `UNBLOCKED`: the stream was deleted (a restart without persistence, FLUSHALL, DEL) while
    // a read was blocked on it; like a missing group, the cure is to create both again.
    ["NOGROUP", "UNBLOCKED"]
        .iter()
        .any(|code| e.code() == Some(code) || e.to_string().contains(code))
}

/// A managed connection whose answers may take up to `response_timeout`.
pub(crate) async fn manager(
    client: &Client,
    cfg: &RedisConfig,
    response_timeout: Duration,
) -> Result<ConnectionManager, SourceError> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(cfg.command_timeout))
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(3);
    ConnectionManager::new_with_config(client.clone(), config)
        .await
        .map_err(map_err)
}

/// Creates `group` on every one of `streams` (from the start of the stream, so jobs enqueued
/// before the first worker are not skipped), creating the streams when missing.
pub(crate) async fn ensure_groups(
    conn: &mut ConnectionManager,
    group: &str,
    streams: &[String],
) -> Result<(), SourceError> {
    for stream in streams {
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(conn)
            .await;
        match created {
            Ok(()) => debug!(stream = %stream, %group, "created consumer group"),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {}
            Err(e) => return Err(map_err(e)),
        }
    }
    Ok(())
}
