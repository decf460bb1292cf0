//! `GET /api/v1/jobs/{id}/events`: a job's events (docs/wire-format.md#job-events JSON) as Server-Sent Events. Each
//! event's SSE `id` is its index (from 0) and its SSE `event` its type; a client that reconnects
//! with `Last-Event-ID: N` (or `?after=N`) gets the events after N. The stream ends once the job
//! is final and every event has been sent. This module only reads the store; it must never change
//! a job.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::common::{ApiError, AppState};
use super::store::Store;

#[derive(Debug, Deserialize)]
pub struct EventsQuery {
    /// Resume after this event id (like `Last-Event-ID`).
    after: Option<u64>,
}

struct Cursor {
    store: Arc<Store>,
    id: String,
    next: u64,
    pending: std::collections::VecDeque<(u64, String)>,
    changes: tokio::sync::watch::Receiver<u64>,
    done: bool,
}

impl Cursor {
    async fn step(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        loop {
            if let Some((idx, text)) = self.pending.pop_front() {
                self.next = idx + 1;
                let ty = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
                    .unwrap_or_else(|| "message".into());
                let ev = Event::default().id(idx.to_string()).event(ty).data(text);
                return Some((Ok(ev), self));
            }
            if self.done {
                return None;
            }
            self.changes.borrow_and_update();
            // Read the job's state before its events, so a job that became final meanwhile
            // still has every event delivered before the stream ends.
            let final_now = self
                .store
                .get(&self.id)
                .map(|r| r.state.is_final())
                .unwrap_or(true);
            match self.store.events_from(&self.id, self.next) {
                Ok(evs) => self.pending.extend(evs),
                Err(e) => {
                    tracing::warn!(job_id = %self.id, error = %e, "reading job events");
                    return None;
                }
            }
            if final_now {
                self.done = true;
                continue;
            }
            if self.pending.is_empty() {
                let _ = tokio::time::timeout(Duration::from_secs(5), self.changes.changed()).await;
            }
        }
    }
}

pub async fn events(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Query<EventsQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    app.store.get(&id)?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let next = match last.or(q.after) {
        Some(n) => n + 1,
        None => 0,
    };
    let cursor = Cursor {
        store: app.store.clone(),
        changes: app.store.subscribe_changes(),
        id,
        next,
        pending: Default::default(),
        done: false,
    };
    Ok(Sse::new(stream::unfold(cursor, Cursor::step)).keep_alive(KeepAlive::default()))
}
