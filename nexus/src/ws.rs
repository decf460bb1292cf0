//! `GET /api/v1/ws`: the WebSocket job push (docs/transports.md `websocket`). One socket per worker; the
//! frames are those of `citadel_transports::websocket::protocol` (documented in docs/transports.md). The
//! worker says `hello`, grants `credit`, and the control plane pushes leased jobs up to the credit
//! the moment they become ready; settlements, lease renewals and job events arrive as requests
//! with an id and are answered `ok` or `error` (the status the HTTP API would give: 409 for a lost
//! lease). Cancellation of a job the worker holds is sent as a `cancel` frame. After `hello`, the
//! jobs still leased to the worker id are sent again (`again`: a push lost with a connection).
//!
//! This module owns the socket only: every change goes through the same [`Store`] operations and
//! checks as the HTTP API (claim, renew, settle, events), answered after [`Store::flush`] where
//! the HTTP API would wait for one. It
//! keeps no job state beyond which leases this socket was given. A socket that dies releases
//! nothing: its leases expire as usual and the jobs go back to the queue (or the DLQ).
//!
//! A socket works for the [`Principal`] that opened it: it is pushed only that organization's
//! jobs, may touch only those, and is closed as soon as its node's credential is revoked.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Extension, State};
use axum::http::StatusCode;
use axum::response::Response;
use citadel_transports::websocket::protocol::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;

use super::auth::Principal;
use super::common::{lease_of, record_event, settle_of, ApiError, AppState, MAX_BODY};
use super::store::{now_ms, NodeRecord, QueueState, Store, DEFAULT_LEASE};

/// The most credit a worker may hold (jobs pushed but not yet settled are not limited by it).
const MAX_CREDIT: usize = 10_000;
/// A worker that sent nothing at all (it pings every 15 s by default) for this long is gone: its
/// socket is closed (its leases were expiring meanwhile anyway).
const IDLE_CLOSE: Duration = Duration::from_secs(90);
/// A ready job whose retry delay ends, or whose lease expired, bumps nothing: look this often.
const RECHECK: Duration = Duration::from_millis(250);

pub async fn upgrade(
    State(app): State<Arc<AppState>>,
    Extension(who): Extension<Principal>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.max_message_size(MAX_BODY)
        .on_upgrade(move |socket| Session::new(app, who, peer).run(socket))
}

type Out = mpsc::UnboundedSender<ServerFrame>;

fn error_frame(id: Option<u64>, e: ApiError) -> ServerFrame {
    ServerFrame::Error {
        id,
        status: e.0.as_u16(),
        error: e.1,
    }
}

struct Session {
    app: Arc<AppState>,
    /// Who opened the socket.
    who: Principal,
    peer: SocketAddr,
    /// Set by `hello`: (worker id, node name).
    worker: Option<(String, String)>,
    lease: Duration,
    credit: usize,
    stopped: bool,
    /// Jobs pushed on this socket and not settled: job id → lease id.
    held: HashMap<String, String>,
    /// Jobs whose cancellation was already sent.
    told: HashSet<String>,
}

impl Session {
    fn new(app: Arc<AppState>, who: Principal, peer: SocketAddr) -> Self {
        Self {
            app,
            who,
            peer,
            worker: None,
            lease: DEFAULT_LEASE,
            credit: 0,
            stopped: false,
            held: HashMap::new(),
            told: HashSet::new(),
        }
    }

    fn store(&self) -> &Store {
        &self.app.store
    }

    async fn run(mut self, mut socket: WebSocket) {
        let (out, mut queued) = mpsc::unbounded_channel::<ServerFrame>();
        let mut ready = self.store().subscribe_ready();
        let mut changes = self.store().subscribe_changes();
        let mut revoked = self.app.credentials.subscribe_revocations();
        // A revocation between the request's check and this subscription is not missed.
        revoked.mark_changed();
        tracing::debug!(peer = %self.peer, "worker WebSocket opened");
        let mut heard = tokio::time::Instant::now();
        let why = loop {
            if self.credit > 0 && !self.stopped {
                self.push(&out).await;
            }
            let wants = self.credit > 0 && !self.stopped;
            tokio::select! {
                msg = socket.recv() => {
                    heard = tokio::time::Instant::now();
                    match msg {
                        None => break "closed".to_string(),
                        Some(Err(e)) => break format!("read error: {e}"),
                        Some(Ok(Message::Text(text))) => self.on_text(&text, &out),
                        Some(Ok(Message::Binary(_))) => {
                            let _ = out.send(error_frame(None, ApiError(StatusCode::BAD_REQUEST,
                                "binary frames are not part of the protocol: send JSON text frames".into())));
                        }
                        Some(Ok(Message::Ping(_))) => self.seen(),
                        Some(Ok(Message::Close(_))) => break "closed by the worker".to_string(),
                        Some(Ok(Message::Pong(_))) => {}
                    }
                }
                () = tokio::time::sleep_until(heard + IDLE_CLOSE) => {
                    break format!("nothing from the worker for {IDLE_CLOSE:?}");
                }
                Some(frame) = queued.recv() => {
                    if let Err(e) = socket.send(Message::text(frame.to_text())).await {
                        break format!("write error: {e}");
                    }
                }
                _ = ready.changed(), if wants => {}
                () = tokio::time::sleep(RECHECK), if wants => {}
                _ = changes.changed(), if !self.held.is_empty() => self.tell_cancellations(&out),
                _ = revoked.changed() => {
                    if let Some(node) = self.who.node_id().filter(|n| !self.app.credentials.is_live(n)) {
                        let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                            code: 1008,
                            reason: "this node's credential was revoked".into(),
                        }))).await;
                        break format!("the credential of node {node} was revoked");
                    }
                }
            }
        };
        let worker = self.worker.as_ref().map(|w| w.0.as_str()).unwrap_or("");
        tracing::info!(peer = %self.peer, %worker, held = self.held.len(), reason = %why,
            "worker WebSocket closed; its leases expire as usual");
    }

    /// Claims up to the credit and pushes what it got, after the claim is durable.
    async fn push(&mut self, out: &Out) {
        let Some((worker, _)) = &self.worker else {
            return;
        };
        if (self.who.node_id()).is_some_and(|n| !self.app.credentials.is_live(n)) {
            return; // revoked: the loop closes the socket
        }
        let got = match self
            .store()
            .claim(&self.who.org, worker, self.credit, self.lease)
        {
            Ok(got) if got.is_empty() => return,
            Ok(got) => got,
            Err(e) => {
                tracing::error!(error = %e, "claiming jobs for a WebSocket worker");
                return;
            }
        };
        if let Err(e) = self.store().flush().await {
            tracing::error!(error = %e, "flushing claimed jobs");
        }
        self.credit = self.credit.saturating_sub(got.len());
        for r in got {
            if let Some(l) = &r.lease {
                self.held.insert(r.id.clone(), l.id.clone());
            }
            match serde_json::to_value(&r) {
                Ok(job) => {
                    let _ = out.send(ServerFrame::Job { job, again: false });
                }
                Err(e) => tracing::error!(job_id = %r.id, error = %e, "encoding a pushed job"),
            }
        }
    }

    /// After `hello`: the jobs still leased to this worker id go out again (`again`), so a push
    /// lost with the last connection, or the leases of a worker that restarted, come back at once
    /// instead of when the lease expires. The worker ignores the ones it already has.
    fn push_again(&mut self, worker: &str, out: &Out) {
        let who = self.who.clone();
        let mine = self
            .store()
            .list(Some(QueueState::Leased), usize::MAX)
            .into_iter()
            .filter(|r| r.lease.as_ref().is_some_and(|l| l.worker == worker))
            .filter(|r| who.may_touch(&r.org));
        for r in mine {
            if let (Some(l), Ok(job)) = (&r.lease, serde_json::to_value(&r)) {
                self.held.insert(r.id.clone(), l.id.clone());
                let _ = out.send(ServerFrame::Job { job, again: true });
            }
        }
    }

    /// Sends `cancel` once for each held job the producer cancelled; forgets jobs that are no
    /// longer leased to this socket.
    fn tell_cancellations(&mut self, out: &Out) {
        let store = &self.app.store;
        let told = &mut self.told;
        self.held.retain(|id, lease| match store.get(id) {
            Ok(r)
                if r.state == QueueState::Leased
                    && r.lease.as_ref().is_some_and(|l| &l.id == lease) =>
            {
                if r.cancel_requested && told.insert(id.clone()) {
                    let _ = out.send(ServerFrame::Cancel { job: id.clone() });
                }
                true
            }
            _ => {
                told.remove(id);
                false
            }
        });
    }

    /// A ping from the worker: the node is alive.
    fn seen(&self) {
        if let Some((id, name)) = &self.worker {
            let node = NodeRecord {
                id: id.clone(),
                name: name.clone(),
                ip_address: self.peer.ip().to_string(),
                status: "online".into(),
                last_seen_ms: now_ms(),
                report: None,
            };
            if let Err(e) = self.store().heartbeat(node) {
                tracing::warn!(error = %e, "recording a node heartbeat");
            }
        }
    }

    /// Answers at once, or once the store is durable when `durable`.
    fn answer(&self, out: &Out, frame: ServerFrame, durable: bool) {
        if durable {
            self.answer_after_flush(out, frame);
        } else {
            let _ = out.send(frame);
        }
    }

    /// Answers `id` once the store is durable.
    fn answer_after_flush(&self, out: &Out, frame: ServerFrame) {
        let (store, out) = (self.app.store.clone(), out.clone());
        tokio::spawn(async move {
            let frame = match (store.flush().await, &frame) {
                (Ok(()), _) => frame,
                (Err(e), ServerFrame::Ok { id, .. }) => error_frame(Some(*id), e.into()),
                (Err(_), _) => frame,
            };
            let _ = out.send(frame);
        });
    }

    fn on_text(&mut self, text: &str, out: &Out) {
        let frame = match serde_json::from_str::<ClientFrame>(text) {
            Ok(f) => f,
            Err(e) => {
                let msg = format!(
                    "unreadable frame: {e} (frames are JSON objects with a `type`: hello, credit, stop, settle, renew, event, ping)"
                );
                let _ = out.send(error_frame(
                    ClientFrame::id_of(text),
                    ApiError(StatusCode::BAD_REQUEST, msg),
                ));
                return;
            }
        };
        if let Err((id, e)) = self.apply(frame, out) {
            let _ = out.send(error_frame(id, e));
        }
    }

    /// Refuses a job of another organization as the HTTP API does: as if it did not exist.
    fn mine(&self, id: u64, job: &str) -> Result<(), (Option<u64>, ApiError)> {
        match self.store().get(job) {
            Ok(r) if !self.who.may_touch(&r.org) => Err((
                Some(id),
                super::store::StoreError::NotFound(job.to_string()).into(),
            )),
            _ => Ok(()),
        }
    }

    fn apply(&mut self, frame: ClientFrame, out: &Out) -> Result<(), (Option<u64>, ApiError)> {
        let bad = |id: Option<u64>, m: &str| (id, ApiError(StatusCode::BAD_REQUEST, m.into()));
        match &frame {
            ClientFrame::Settle { id, job, .. }
            | ClientFrame::Renew { id, job, .. }
            | ClientFrame::Event { id, job, .. } => self.mine(*id, job)?,
            _ => {}
        }
        if self.worker.is_none() && !matches!(frame, ClientFrame::Hello { .. }) {
            let id = match &frame {
                ClientFrame::Stop { id }
                | ClientFrame::Settle { id, .. }
                | ClientFrame::Renew { id, .. }
                | ClientFrame::Event { id, .. }
                | ClientFrame::Ping { id } => Some(*id),
                _ => None,
            };
            return Err(bad(
                id,
                r#"say hello first: {"type":"hello","worker":"ID"}"#,
            ));
        }
        match frame {
            ClientFrame::Hello {
                worker,
                name,
                lease_ms,
            } => {
                if self.worker.is_some() {
                    return Err(bad(None, "hello was already said on this socket"));
                }
                if worker.is_empty() || worker.len() > 256 {
                    return Err(bad(None, "`worker` must be 1 to 256 characters"));
                }
                self.lease = lease_of(lease_ms);
                let name = name
                    .filter(|n| !n.is_empty())
                    .unwrap_or_else(|| worker.clone());
                tracing::info!(peer = %self.peer, %worker, lease_ms = self.lease.as_millis() as u64, "worker WebSocket said hello");
                self.worker = Some((worker.clone(), name));
                self.seen();
                let _ = out.send(ServerFrame::Welcome {
                    worker: worker.clone(),
                    lease_ms: self.lease.as_millis() as u64,
                    version: env!("CARGO_PKG_VERSION").into(),
                });
                self.push_again(&worker, out);
            }
            ClientFrame::Credit { credit } => {
                self.credit = self.credit.saturating_add(credit as usize).min(MAX_CREDIT);
            }
            ClientFrame::Stop { id } => {
                self.stopped = true;
                self.credit = 0;
                let _ = out.send(ServerFrame::ok(id));
            }
            ClientFrame::Ping { id } => {
                let _ = out.send(ServerFrame::ok(id));
            }
            ClientFrame::Settle {
                id,
                job,
                lease_id,
                action,
                delay_ms,
                reason,
                errors,
                outcome,
            } => {
                let how = settle_of(&action, delay_ms, reason, errors, outcome.as_deref())
                    .map_err(|e| (Some(id), e))?;
                self.store()
                    .settle(&job, &lease_id, how)
                    .map_err(|e| (Some(id), e.into()))?;
                self.held.remove(&job);
                self.told.remove(&job);
                self.answer_after_flush(out, ServerFrame::ok(id));
            }
            ClientFrame::Renew {
                id,
                job,
                lease_id,
                lease_ms,
            } => {
                let (r, durable) = self
                    .store()
                    .renew(&job, &lease_id, lease_of(lease_ms))
                    .map_err(|e| (Some(id), e.into()))?;
                let frame = ServerFrame::Ok {
                    id,
                    lease_expires_ms: r.lease.as_ref().map(|l| l.expires_ms),
                    cancel_requested: Some(r.cancel_requested),
                };
                self.answer(out, frame, durable);
            }
            ClientFrame::Event {
                id,
                job,
                lease_id,
                event,
            } => {
                let lease = lease_id
                    .as_deref()
                    .or_else(|| self.held.get(&job).map(String::as_str));
                let durable =
                    record_event(self.store(), &job, lease, &event).map_err(|e| (Some(id), e))?;
                self.answer(out, ServerFrame::ok(id), durable);
            }
        }
        Ok(())
    }
}
