//! Several jobs' recorded successes and settlements in one request (`POST /api/v1/jobs/batch`,
//! to a plane whose health lists [`BATCH_FEATURE`](crate::control_plane::wire::BATCH_FEATURE)):
//! one task sends what callers queue, with up to [`IN_FLIGHT`] batches in flight; whatever is
//! queued meanwhile goes out as the next one (one request, one flush on the plane). Each caller
//! waits for its own operation's result, which the plane answers only once the batch is
//! durable; a caller sends a job's next operation only after that answer, so two batches in
//! flight never hold operations of one job. This module must never decide what an operation
//! says; it only carries operations and their answers.

use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};
use reqwest::{Method, StatusCode};
use tokio::sync::{mpsc, oneshot};

use crate::control_plane::client::failure;
use crate::control_plane::wire::{BatchOp, BatchRequest, BatchResponse, BatchResult, MAX_BATCH};
use crate::control_plane::{Client, Failure};
use crate::source::SourceError;

type Request = (BatchOp, oneshot::Sender<Result<(), Failure>>);

/// Batches sent at once: while one waits for the plane's flush, the next can already travel
/// (measured: with one, each operation also waited for the batch ahead of it).
pub(crate) const IN_FLIGHT: usize = 2;

/// The sending side of the batch task; the task ends when this is dropped.
#[derive(Debug)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl Batcher {
    /// Starts the task sending batches on `client`, each with the request deadline `timeout`.
    pub(crate) fn start(client: Client, timeout: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, client, timeout));
        Self { tx }
    }

    /// Sends `op` with whatever else is waiting; its own result, once the plane made it durable.
    pub(crate) async fn call(&self, op: BatchOp) -> Result<(), Failure> {
        let closed = || Failure {
            status: None,
            error: SourceError::Closed,
        };
        let (done, result) = oneshot::channel();
        self.tx.send((op, done)).map_err(|_| closed())?;
        result.await.map_err(|_| closed())?
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Request>, client: Client, timeout: Duration) {
    let mut flying = FuturesUnordered::new();
    let mut open = true;
    let mut batch: Vec<Request> = Vec::new();
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH), if open && flying.len() < IN_FLIGHT => {
                if n == 0 {
                    open = false;
                    continue;
                }
                flying.push(answer(&client, std::mem::take(&mut batch), timeout));
            }
            Some(()) = flying.next(), if !flying.is_empty() => {}
            else => return,
        }
    }
}

/// Sends one batch and hands each caller its operation's result.
async fn answer(client: &Client, batch: Vec<Request>, timeout: Duration) {
    let (ops, dones): (Vec<BatchOp>, Vec<_>) = batch.into_iter().unzip();
    let n = ops.len();
    let answer = send(client, BatchRequest { ops }, timeout).await;
    tracing::trace!(
        ops = n,
        ok = answer.is_ok(),
        "sent a batch to the control plane"
    );
    match answer {
        Ok(results) if results.len() == n => {
            for (done, r) in dones.into_iter().zip(results) {
                let _ = done.send(result_of(&r));
            }
        }
        Ok(results) => {
            let msg = format!("a batch of {n} was answered with {} results", results.len());
            for done in dones {
                let _ = done.send(Err(Failure {
                    status: None,
                    error: SourceError::Broker(msg.clone()),
                }));
            }
        }
        Err(f) => {
            for done in dones {
                let _ = done.send(Err(Failure {
                    status: f.status,
                    error: f.error.clone(),
                }));
            }
        }
    }
}

/// One request; the per-operation results.
async fn send(
    client: &Client,
    body: BatchRequest,
    timeout: Duration,
) -> Result<Vec<BatchResult>, Failure> {
    let rb = client
        .request(Method::POST, "/api/v1/jobs/batch")
        .json(&body);
    let resp = client.send(rb, timeout).await?;
    let answer: BatchResponse = resp.json().await.map_err(|e| Failure {
        status: None,
        error: SourceError::Unavailable(format!("control plane batch answer unreadable: {e}")),
    })?;
    Ok(answer.results)
}

/// One operation's result as its own request's would have been.
fn result_of(r: &BatchResult) -> Result<(), Failure> {
    match StatusCode::from_u16(r.status) {
        Ok(s) if s.is_success() => Ok(()),
        Ok(s) => Err(failure(s, r.error.as_deref().unwrap_or_default())),
        Err(_) => Err(Failure {
            status: None,
            error: SourceError::Broker(format!("a batch result with status {}", r.status)),
        }),
    }
}
