//! The heartbeat: every interval (30 s by default), the status message goes to the active
//! transport through `JobSource::heartbeat` (Redis: docs/wire-format.md#heartbeat; nexus: the node API). A failed
//! beat is logged and the next one comes on schedule; the loop never stops the worker.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::NodeStatus;

/// The default interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);

/// Beats now and then every `every` until `stop` fires.
pub async fn run(status: Arc<NodeStatus>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let message = status.message().await;
        match status.source().heartbeat(&message).await {
            Ok(()) => tracing::debug!(transport = status.source().name(), "heartbeat sent"),
            Err(e) => {
                tracing::warn!(transport = status.source().name(), error = %e, retryable = e.is_retryable(), "heartbeat failed; next one on schedule")
            }
        }
    }
}
