//! Releases that do not count an attempt. NATS has no way to give a message back without
//! counting the delivery (`-NAK` does), so every release is also recorded in the KV bucket
//! `citadel-released` (key `<stream>.<stream sequence>`, the number of releases), and the attempt
//! of a later delivery is its delivery count minus that number. This module owns that
//! bookkeeping; it must never settle a message itself.

use async_nats::jetstream::kv;
use tracing::debug;

use super::config::token_of;
use super::message::AckInfo;
use super::setup::map_err;
use crate::source::SourceError;

fn key(stream: &str, seq: u64) -> String {
    format!("{}.{seq}", token_of(stream))
}

async fn count(store: &kv::Store, key: &str) -> Result<u32, SourceError> {
    let v = store
        .get(key)
        .await
        .map_err(|e| map_err("reading the released deliveries", e))?;
    Ok(v.and_then(|b| std::str::from_utf8(&b).ok()?.parse().ok())
        .unwrap_or(0))
}

/// Records one more release of the message at `seq` (before it is given back).
pub(crate) async fn record(store: &kv::Store, stream: &str, seq: u64) -> Result<(), SourceError> {
    let key = key(stream, seq);
    let n = count(store, &key).await?;
    store
        .put(&key, (n + 1).to_string().into())
        .await
        .map_err(|e| map_err("recording a release", e))?;
    Ok(())
}

/// The attempt a delivery is: its delivery count less the releases before it (at least 1). A
/// first delivery costs no lookup; when the lookup fails, the delivery count stands.
pub(crate) async fn attempt(store: &kv::Store, stream: &str, info: AckInfo) -> u32 {
    if info.delivered <= 1 {
        return 1;
    }
    match count(store, &key(stream, info.stream_sequence)).await {
        Ok(released) => info.delivered.saturating_sub(released).max(1),
        Err(e) => {
            debug!(error = %e, "reading the released deliveries failed; counting every delivery");
            info.delivered
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_valid_kv_keys() {
        assert_eq!(super::key("JOBS", 42), "JOBS.42");
        assert_eq!(super::key("my!stream", 1), "=6d792173747265616d.1");
    }
}
