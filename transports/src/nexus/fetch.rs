//! Claiming jobs from the control plane in the background, into the inbox `next()` drains (the
//! same hand-over as the Redis transport, so `next()` is cancel-safe and never claims more than
//! the free slots). Full mode long-polls `POST /api/v1/jobs/claim`; plain mode (a server that
//! only speaks docs/wire-format.md#nexus-http) polls `GET /api/v1/jobs/next` every `poll_interval`. The job records
//! become deliveries through [`crate::control_plane::from_record`]. This module must never settle or run a job.

use std::sync::Arc;
use std::time::Instant;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tracing::{debug, warn};

use super::{Inner, Mode};
use crate::backoff::Backoff;
use crate::control_plane::from_record;
use crate::control_plane::wire::{ClaimRequest, ClaimResponse};
use crate::delivery::Incoming;
use crate::source::SourceError;

/// The source name jobs from the control plane carry.
pub const SOURCE: &str = "nexus";

pub(crate) async fn run(inner: Arc<Inner>) {
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        inner.inbox.wait_for_demand().await;
        if inner.inbox.is_closed() {
            return;
        }
        let want = inner.inbox.want();
        if want == 0 {
            continue;
        }
        let round = match inner.mode {
            Mode::Full => claim(&inner, want).await,
            Mode::Plain => poll(&inner).await,
        };
        match round {
            Ok(items) => {
                if retrier.failures() > 0 {
                    tracing::info!("control plane is back");
                }
                retrier.reset();
                let empty = items.is_empty();
                inner.inbox.deliver(items);
                if empty && inner.mode == Mode::Plain {
                    tokio::select! {
                        () = tokio::time::sleep(inner.cfg.poll_interval) => {}
                        () = inner.inbox.wait_closed() => return,
                    }
                }
            }
            Err(e) => {
                let delay = retrier.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot claim jobs from the control plane");
                inner.inbox.fail(e);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = inner.inbox.wait_closed() => return,
                }
            }
        }
    }
}

async fn claim(inner: &Inner, want: usize) -> Result<Vec<Incoming>, SourceError> {
    let body = json!(ClaimRequest {
        worker: inner.cfg.worker_id.clone(),
        max: want,
        wait_ms: inner.cfg.long_poll.as_millis() as u64,
        lease_ms: Some(inner.cfg.lease.as_millis() as u64),
        tags: inner
            .cfg
            .routes
            .as_ref()
            .map(|r| crate::routing::tags_of(&r.peek()))
            .unwrap_or_default(),
        // Only a node that routes offers its name: a plane without routing refuses the field.
        node: inner
            .cfg
            .routes
            .as_ref()
            .map(|_| inner.cfg.node_name.clone()),
        // Once learned, the plane records each job's `claimed` with the claim.
        claimed: super::lock(&inner.claimed_data)
            .clone()
            .filter(|_| inner.claim_event),
    });
    let announced = body["claimed"].is_object();
    let began = Instant::now();
    let rb = inner
        .client
        .request(Method::POST, "/api/v1/jobs/claim")
        .json(&body);
    let v = inner
        .client
        .json(rb, inner.cfg.long_poll + inner.cfg.request_timeout)
        .await?;
    let answer: ClaimResponse = serde_json::from_value(v).map_err(|e| {
        SourceError::Broker(format!("POST /api/v1/jobs/claim: unreadable answer: {e}"))
    })?;
    let items: Vec<Incoming> = answer.jobs.iter().map(from_claim).collect();
    let mut leases = super::lock(&inner.leases);
    for item in &items {
        if let Incoming::Job(d) = item {
            leases.insert(d.job.id.clone(), d.receipt.id().to_string());
        }
    }
    drop(leases);
    if began.elapsed() < super::claim_confirms(inner.cfg.lease) {
        confirm(inner, &answer.jobs, &items, began);
    }
    if announced {
        let mut set = super::lock(&inner.announced);
        for item in &items {
            if let Incoming::Job(d) = item {
                set.insert(d.job.id.clone());
            }
        }
    }
    if !items.is_empty() {
        debug!(count = items.len(), "claimed jobs");
    }
    Ok(items)
}

/// Notes that the claim round begun at `began` confirms its jobs' leases (the first renewal
/// is not sent, and the cancellation check reads the claim's `cancel_requested` instead).
fn confirm(inner: &Inner, records: &[Value], items: &[Incoming], began: Instant) {
    let mut fresh = super::lock(&inner.fresh);
    for (v, item) in records.iter().zip(items) {
        if let Incoming::Job(d) = item {
            let cancel = v["cancel_requested"].as_bool().unwrap_or(false);
            let lease = d.receipt.id().to_string();
            fresh.insert(d.job.id.clone(), (lease, began, cancel));
        }
    }
}

/// One job of a `POST /api/v1/jobs/claim` answer.
pub(crate) fn from_claim(v: &Value) -> Incoming {
    from_record(v, SOURCE)
}

/// Plain mode: one `GET /api/v1/jobs/next`, exactly as the Go agent does it.
async fn poll(inner: &Inner) -> Result<Vec<Incoming>, SourceError> {
    let rb = inner.client.request(Method::GET, "/api/v1/jobs/next");
    let resp = inner.send(rb).await?;
    if resp.status() == StatusCode::NO_CONTENT {
        return Ok(Vec::new());
    }
    let v: Value = resp
        .json()
        .await
        .map_err(|e| SourceError::Broker(format!("GET /api/v1/jobs/next: unreadable job: {e}")))?;
    // A plain-mode job (docs/wire-format.md#nexus-http) has no lease and no attempt count: it is this worker's until it reports.
    let mut v = v;
    if let Some(o) = v.as_object_mut() {
        o.insert("attempts".into(), 1.into());
    }
    Ok(vec![from_claim(&v)])
}
