//! The WebSocket transport (docs/transports.md): a citadel control plane pushes leased jobs to this worker
//! over one WebSocket (`GET /api/v1/ws`, bearer token), for nodes behind proxies that allow
//! nothing but one outbound HTTP(S) connection. This module owns the mapping of the `JobSource`
//! contract onto the frames of [`protocol`]; [`conn`] owns the socket (connect, hello, credit,
//! ping, dead-peer detection, reconnect). It must never run jobs, journal or choose a settlement.
//!
//! - **Credit**: `next(max)` adds its demand to the shared inbox; the connection grants the
//!   server that many more jobs (`credit`), so nothing is pushed without a free slot. Jobs pushed
//!   ahead of a call that was dropped wait in the inbox (cancel-safe); `close()` returns them
//!   after telling the server to stop pushing. After each `hello` the server sends again the jobs
//!   still leased to this worker id; those already delivered are ignored, the others (a push lost
//!   with the connection, or the leases of this worker before a restart) are delivered.
//! - **Receipts** are (job id, lease id), as with the nexus transport: a settlement names the
//!   lease and the server answers 409 when another worker holds the job now.
//! - **While disconnected** settlements, lease renewals and events fail at once with a retryable
//!   error; the runner's settle path retries them and they go through after the reconnect.
//! - **Cancellation** comes as `cancel` frames (and in the answer to each lease renewal, so a
//!   notice missed during a reconnect is still seen); `is_cancelled` answers from memory.

mod conn;
pub mod protocol;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use crate::control_plane::Client;
use crate::delivery::{Incoming, Receipt};
use crate::events::{EventData, WireEvent};
use crate::inbox::Inbox;
use crate::job::JobId;
use crate::settlement::Settlement;
use crate::source::{Capabilities, Health, JobSource, Lease, SettleContext, SourceError};
use protocol::{ClientFrame, ServerFrame};

/// The source name jobs pushed over the WebSocket carry.
pub const SOURCE: &str = "websocket";

/// How the WebSocket transport behaves.
#[derive(Debug, Clone)]
pub struct WebSocketConfig {
    /// `ws://host:port/api/v1/ws` (or `wss://`); [`ws_url`] derives it from the control plane's
    /// `http://` URL.
    pub url: String,
    /// The bearer token (`citadel nexus serve` writes it to `DATA/nexus/token`).
    pub token: Option<String>,
    /// The worker's id: lease holder and node id.
    pub worker_id: String,
    /// The node's display name (`GET /api/v1/nodes`).
    pub node_name: String,
    /// The lease asked for each pushed job; extended every third of it.
    pub lease: Duration,
    /// A WebSocket ping goes out this often.
    pub ping: Duration,
    /// With no frame at all from the server for this long, the peer is dead: reconnect.
    pub dead_after: Duration,
    /// How long `next()` waits before returning empty.
    pub block: Duration,
    /// The deadline of connecting and of one request (settle, renew, event).
    pub request_timeout: Duration,
}

impl WebSocketConfig {
    pub fn new(url: impl Into<String>, worker_id: impl Into<String>) -> Self {
        let worker_id = worker_id.into();
        Self {
            url: url.into(),
            token: None,
            node_name: worker_id.clone(),
            worker_id,
            lease: Duration::from_secs(60),
            ping: Duration::from_secs(15),
            dead_after: Duration::from_secs(45),
            block: Duration::from_secs(1),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The WebSocket URL of a control plane given by its `http(s)://` URL.
pub fn ws_url(http_url: &str) -> Result<String, SourceError> {
    let base = http_url.trim_end_matches('/');
    let rest = if let Some(r) = base.strip_prefix("http://") {
        format!("ws://{r}")
    } else if let Some(r) = base.strip_prefix("https://") {
        format!("wss://{r}")
    } else {
        return Err(SourceError::Config(format!(
            "the control plane URL must start with http:// or https://, not {http_url:?}"
        )));
    };
    Ok(format!("{rest}{}", protocol::PATH))
}

/// The `http(s)://` base of a WebSocket URL (for the node API).
fn http_base(ws: &str) -> Result<String, SourceError> {
    let base = if let Some(r) = ws.strip_prefix("ws://") {
        format!("http://{r}")
    } else if let Some(r) = ws.strip_prefix("wss://") {
        format!("https://{r}")
    } else {
        return Err(SourceError::Config(format!(
            "the WebSocket URL must start with ws:// or wss://, not {ws:?}"
        )));
    };
    let base = base.trim_end_matches('/');
    Ok(base
        .strip_suffix(protocol::PATH)
        .unwrap_or(base)
        .to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The live connection, as the request side sees it.
#[derive(Debug, Default)]
struct Link {
    /// Frames to the connection task; `None` while disconnected.
    out: Option<mpsc::UnboundedSender<Message>>,
    /// Requests waiting for their `ok` or `error`.
    pending: HashMap<u64, oneshot::Sender<ServerFrame>>,
    next_id: u64,
}

#[derive(Debug)]
pub(crate) struct Inner {
    cfg: WebSocketConfig,
    http: Client,
    inbox: Inbox,
    link: Mutex<Link>,
    /// Jobs the server said were cancelled.
    cancelled: Mutex<HashSet<String>>,
    /// Deliveries handed to the inbox and not settled (a job sent `again` is not delivered twice).
    delivered: Mutex<HashSet<Receipt>>,
    /// Each attempt's reported outcome, sent with its `ack`.
    reported: crate::control_plane::Outcomes,
    /// The attempts whose `end` went out early as their recorded success.
    recorded: crate::control_plane::Recorded,
    /// Connections made, the first one included.
    connections: AtomicU64,
}

impl Inner {
    fn connected(&self, out: mpsc::UnboundedSender<Message>) {
        lock(&self.link).out = Some(out);
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Every request still waiting fails (retryably): its answer can no longer come.
    fn disconnected(&self) {
        let mut link = lock(&self.link);
        link.out = None;
        link.pending.clear();
    }

    fn answer(&self, id: u64, frame: ServerFrame) {
        if let Some(tx) = lock(&self.link).pending.remove(&id) {
            let _ = tx.send(frame);
        }
    }

    /// Sends a request and waits for its answer; `Err` only when no answer came.
    async fn request(
        &self,
        make: impl FnOnce(u64) -> ClientFrame,
    ) -> Result<ServerFrame, SourceError> {
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut link = lock(&self.link);
            let Some(out) = link.out.clone() else {
                return Err(SourceError::Unavailable(
                    "not connected to the control plane (reconnecting)".into(),
                ));
            };
            let id = link.next_id;
            link.next_id += 1;
            link.pending.insert(id, tx);
            if out.send(Message::text(make(id).to_text())).is_err() {
                link.pending.remove(&id);
                return Err(SourceError::Unavailable("the connection is closing".into()));
            }
            id
        };
        match tokio::time::timeout(self.cfg.request_timeout, rx).await {
            Ok(Ok(frame)) => Ok(frame),
            Ok(Err(_)) => Err(SourceError::Unavailable(
                "the connection to the control plane was lost before the answer".into(),
            )),
            Err(_) => {
                lock(&self.link).pending.remove(&id);
                Err(SourceError::Unavailable(format!(
                    "no answer from the control plane within {:?}",
                    self.cfg.request_timeout
                )))
            }
        }
    }
}

/// The error frame of a request as a [`SourceError`] (5xx: retryable).
fn refused(status: u16, error: String) -> SourceError {
    if status >= 500 {
        SourceError::Busy(format!("control plane answered {status}: {error}"))
    } else {
        SourceError::Broker(format!("control plane answered {status}: {error}"))
    }
}

/// A [`JobSource`] fed by a citadel control plane over one WebSocket. Create it with
/// [`WebSocketSource::connect`].
#[derive(Debug)]
pub struct WebSocketSource {
    inner: Arc<Inner>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WebSocketSource {
    /// Connects and says hello (a refused token or a missing endpoint is a configuration error,
    /// an unreachable server a retryable one), then keeps the connection up in the background.
    pub async fn connect(cfg: WebSocketConfig) -> Result<Self, SourceError> {
        let http = Client::new(
            &http_base(&cfg.url)?,
            cfg.token.clone(),
            cfg.request_timeout,
        )?;
        let inner = Arc::new(Inner {
            cfg,
            http,
            inbox: Inbox::default(),
            link: Mutex::default(),
            cancelled: Mutex::default(),
            delivered: Mutex::default(),
            reported: Default::default(),
            recorded: Default::default(),
            connections: AtomicU64::new(0),
        });
        let ws = conn::open(&inner).await?;
        info!(url = %inner.cfg.url, worker = %inner.cfg.worker_id, lease_ms = inner.cfg.lease.as_millis() as u64, "websocket job source connected");
        let task = tokio::spawn(conn::run(inner.clone(), ws));
        Ok(Self {
            inner,
            task: Mutex::new(Some(task)),
        })
    }

    pub fn config(&self) -> &WebSocketConfig {
        &self.inner.cfg
    }

    /// Whether the WebSocket is up now.
    pub fn is_connected(&self) -> bool {
        lock(&self.inner.link).out.is_some()
    }

    /// Connections made so far (1 + reconnects).
    pub fn connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Relaxed)
    }
}

impl Drop for WebSocketSource {
    fn drop(&mut self) {
        self.inner.inbox.close();
        if let Some(t) = lock(&self.task).take() {
            t.abort();
        }
    }
}

#[async_trait]
impl JobSource for WebSocketSource {
    fn name(&self) -> &'static str {
        SOURCE
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::leased(self.inner.cfg.lease)
    }

    async fn next(&self, max: usize) -> Result<Vec<Incoming>, SourceError> {
        self.inner.inbox.next(max, self.inner.cfg.block).await
    }

    async fn settle(
        &self,
        receipt: &Receipt,
        settlement: &Settlement,
        ctx: &SettleContext<'_>,
    ) -> Result<(), SourceError> {
        let (delay_ms, reason, errors) = match settlement {
            Settlement::Retry { delay } => (delay.as_millis() as u64, None, ctx.errors.clone()),
            Settlement::DeadLetter { reason } => (0, Some(reason.clone()), ctx.errors.clone()),
            Settlement::Ack | Settlement::Release => (0, None, Vec::new()),
        };
        let outcome = self.inner.reported.take(receipt.queue());
        self.inner.recorded.forget(receipt.queue());
        let outcome = outcome.filter(|_| matches!(settlement, Settlement::Ack));
        let answer = self
            .inner
            .request(|id| ClientFrame::Settle {
                id,
                job: receipt.queue().to_string(),
                lease_id: receipt.id().to_string(),
                action: settlement.name().to_string(),
                delay_ms,
                reason,
                errors,
                outcome: outcome.map(str::to_string),
            })
            .await?;
        match answer {
            ServerFrame::Error { status: 404, .. } | ServerFrame::Ok { .. } => {
                lock(&self.inner.cancelled).remove(receipt.queue());
                lock(&self.inner.delivered).remove(receipt);
                Ok(())
            }
            ServerFrame::Error { status: 409, .. } => {
                lock(&self.inner.delivered).remove(receipt);
                warn!(receipt = %receipt, settlement = settlement.name(), "not settled: the lease is lost");
                Err(SourceError::LeaseLost(receipt.clone()))
            }
            ServerFrame::Error { status, error, .. } => Err(refused(status, error)),
            other => Err(SourceError::Broker(format!("unexpected answer {other:?}"))),
        }
    }

    async fn extend_lease(&self, receipt: &Receipt) -> Result<Lease, SourceError> {
        let answer = self
            .inner
            .request(|id| ClientFrame::Renew {
                id,
                job: receipt.queue().to_string(),
                lease_id: receipt.id().to_string(),
                lease_ms: Some(self.inner.cfg.lease.as_millis() as u64),
            })
            .await?;
        match answer {
            ServerFrame::Ok {
                cancel_requested, ..
            } => {
                if cancel_requested == Some(true) {
                    lock(&self.inner.cancelled).insert(receipt.queue().to_string());
                }
                Ok(Lease::Held)
            }
            ServerFrame::Error {
                status: 404 | 409, ..
            } => {
                lock(&self.inner.delivered).remove(receipt);
                warn!(receipt = %receipt, "lease lost");
                Ok(Lease::Lost)
            }
            ServerFrame::Error { status, error, .. } => Err(refused(status, error)),
            other => Err(SourceError::Broker(format!("unexpected answer {other:?}"))),
        }
    }

    async fn is_cancelled(&self, job: &JobId) -> Result<bool, SourceError> {
        Ok(lock(&self.inner.cancelled).contains(job.as_str()))
    }

    async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        let value: serde_json::Value = serde_json::from_str(&event.to_json())
            .map_err(|e| SourceError::Broker(format!("encoding the event: {e}")))?;
        self.inner.reported.note(event);
        let job = event.job_id.to_string();
        let lease_id = lock(&self.inner.delivered)
            .iter()
            .find(|r| r.queue() == job)
            .map(|r| r.id().to_string());
        if let (Some(l), EventData::End { .. }) = (&lease_id, &event.data) {
            if self.inner.recorded.take(&job, l) {
                return Ok(()); // it went out as the recorded success
            }
        }
        let answer = self
            .inner
            .request(|id| ClientFrame::Event {
                id,
                job,
                lease_id,
                event: value,
            })
            .await?;
        match answer {
            ServerFrame::Ok { .. } => Ok(()),
            ServerFrame::Error { status, error, .. } => Err(refused(status, error)),
            other => Err(SourceError::Broker(format!("unexpected answer {other:?}"))),
        }
    }

    /// Sends the job's `end` under its lease; the plane answers once it is durable. From then
    /// on the plane finishes the job with this result even if the lease expires and never
    /// pushes it again; the `end` the runner publishes next is not sent a second time.
    async fn record_success(&self, end: &WireEvent) -> Result<(), SourceError> {
        let job = end.job_id.as_str();
        let lease = lock(&self.inner.delivered)
            .iter()
            .find(|r| r.queue() == job)
            .map(|r| r.id().to_string());
        let Some(lease) = lease else {
            return Ok(()); // no lease to record it under
        };
        self.publish(end).await?;
        self.inner.recorded.insert(job, &lease);
        Ok(())
    }

    async fn health(&self) -> Health {
        let started = Instant::now();
        match self.inner.request(|id| ClientFrame::Ping { id }).await {
            Ok(ServerFrame::Ok { .. }) => Health::up(started.elapsed()),
            Ok(other) => Health::down(format!("unexpected answer to ping: {other:?}")),
            Err(e) => Health::down(e.to_string()),
        }
    }

    async fn heartbeat(&self, status: &serde_json::Value) -> Result<(), SourceError> {
        let state = status
            .get("status")
            .and_then(serde_json::Value::as_str)
            .unwrap_or("online");
        let body = json!({"id": self.inner.cfg.worker_id, "name": self.inner.cfg.node_name, "status": state});
        let rb = self
            .inner
            .http
            .request(Method::POST, "/api/v1/nodes/heartbeat")
            .json(&body);
        self.inner
            .http
            .send(rb, self.inner.cfg.request_timeout)
            .await
            .map(|_| ())
            .map_err(SourceError::from)
    }

    async fn take_buffered(&self) -> Vec<Incoming> {
        self.inner.inbox.take_buffered()
    }

    async fn close(&self) -> Vec<Incoming> {
        // Jobs pushed before the server's answer to `stop` are in the inbox when it comes.
        if let Err(e) = self.inner.request(|id| ClientFrame::Stop { id }).await {
            warn!(error = %e, "could not tell the control plane to stop pushing; jobs it pushes now come back when their lease expires");
        }
        self.inner.inbox.close();
        let left = self.inner.inbox.take_buffered();
        info!(unclaimed = left.len(), "websocket job source closed");
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_derive_both_ways() {
        assert_eq!(
            ws_url("http://127.0.0.1:7411/").unwrap(),
            "ws://127.0.0.1:7411/api/v1/ws"
        );
        assert_eq!(
            ws_url("https://cp.example").unwrap(),
            "wss://cp.example/api/v1/ws"
        );
        assert!(matches!(ws_url("cp:80"), Err(SourceError::Config(_))));
        assert_eq!(
            http_base("wss://cp.example/api/v1/ws").unwrap(),
            "https://cp.example"
        );
        assert_eq!(http_base("ws://h:1").unwrap(), "http://h:1");
        assert!(http_base("http://h:1").is_err());
    }
}
