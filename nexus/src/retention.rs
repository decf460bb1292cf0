//! The control plane's retention (docs/control-plane.md#retention): the background task that
//! folds a finished job's events and removes the finished jobs past their age or beyond the
//! count ([`Queue::retire`](super::queue::Queue::retire) decides which), the admin endpoints that
//! purge dead-lettered jobs and report the store's size, and the folding of events itself (pure).
//! It must never remove a queued, leased or dead-lettered job on its own, and it must never
//! decide a job's state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::common::{parse, ApiError, ApiResult, AppState, Body};
use super::queue::Retention;
use super::store::{QueueState, Store, StoreError};

/// A finished job with at most this many events is left as it is (nothing worth folding).
pub const FOLD_FROM: u64 = 4;
/// The most jobs one round of retention removes while it holds the queue.
const SWEEP_ROUND: usize = 2_000;
/// How often noted finished jobs have their events folded.
const FOLD_EVERY: Duration = Duration::from_millis(500);

/// When retention runs: a quarter of the age kept, between a second and a minute.
pub fn sweep_every(policy: &Retention) -> Duration {
    policy
        .max_age
        .map_or(Duration::from_secs(60), |a| a / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Folds finished jobs' events as they finish and applies `policy` every [`sweep_every`] (and
/// once at once, with every finished job's events folded then), flushing what it removed.
pub async fn keep(store: Arc<Store>, policy: Retention) {
    let backlog = store.finished_with_events();
    fold_all(&store, backlog).await;
    sweep(&store, &policy).await;
    let mut fold_tick = tokio::time::interval(FOLD_EVERY);
    let mut sweep_tick = tokio::time::interval(sweep_every(&policy));
    sweep_tick.tick().await;
    loop {
        tokio::select! {
            _ = fold_tick.tick() => fold_all(&store, store.take_to_fold()).await,
            _ = sweep_tick.tick() => sweep(&store, &policy).await,
        }
    }
}

async fn fold_all(store: &Store, ids: Vec<String>) {
    let mut folded = 0;
    for id in &ids {
        match store.fold_events(id) {
            Ok(n) => folded += n,
            Err(e) => tracing::warn!(job_id = %id, error = %e, "folding a finished job's events"),
        }
        tokio::task::yield_now().await;
    }
    if folded > 0 {
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "flushing folded events");
        }
        tracing::debug!(
            jobs = ids.len(),
            events = folded,
            "folded finished jobs' events"
        );
    }
}

/// Applies `policy` in rounds of [`SWEEP_ROUND`] jobs, so requests wait for one round at most.
async fn sweep(store: &Arc<Store>, policy: &Retention) {
    let mut total = super::store::Removed::default();
    loop {
        let (s, p) = (store.clone(), *policy);
        let round = tokio::task::spawn_blocking(move || s.retire(&p, SWEEP_ROUND)).await;
        match round {
            Ok(Ok(r)) => {
                total.jobs += r.jobs;
                total.events += r.events;
                if r.jobs < SWEEP_ROUND as u64 {
                    break;
                }
            }
            Ok(Err(e)) => {
                tracing::error!(error = %e, "retention failed; trying again at the next sweep");
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, "the retention task failed");
                break;
            }
        }
    }
    if total.jobs > 0 {
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "flushing retention");
        }
        tracing::info!(
            jobs = total.jobs,
            events = total.events,
            "retention removed finished jobs"
        );
    }
}

/// Folds stored events (index, JSON text) of a finished job: each run of two or more `chunk`
/// events becomes one `chunk` at the run's first index, its `data.content` the run's contents
/// joined, `data.folded` the number of tokens it stands for. Every other event is kept as it is.
/// Returns the records to write and the indexes to delete; folding folded events changes nothing.
pub fn fold(events: &[(u64, String)]) -> (Vec<(u64, String)>, Vec<u64>) {
    let parsed: Vec<(u64, Option<Value>)> = events
        .iter()
        .map(|(i, t)| (*i, serde_json::from_str::<Value>(t).ok()))
        .collect();
    let is_chunk = |v: &Option<Value>| {
        v.as_ref()
            .is_some_and(|v| v.get("type").and_then(Value::as_str) == Some("chunk"))
    };
    let (mut write, mut drop) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < parsed.len() {
        let run = parsed[i..].iter().take_while(|(_, v)| is_chunk(v)).count();
        if run < 2 {
            i += 1;
            continue;
        }
        let group = &parsed[i..i + run];
        let mut content = String::new();
        let mut tokens = 0u64;
        for (_, v) in group {
            let data = v.as_ref().and_then(|v| v.get("data"));
            if let Some(c) = data.and_then(|d| d.get("content")).and_then(Value::as_str) {
                content.push_str(c);
            }
            tokens += data
                .and_then(|d| d.get("folded"))
                .and_then(Value::as_u64)
                .unwrap_or(1);
        }
        let mut first = group[0].1.clone().unwrap_or(Value::Null);
        if let Some(last_ts) = group[run - 1].1.as_ref().and_then(|v| v.get("timestamp")) {
            first["timestamp"] = last_ts.clone();
        }
        let data = first
            .as_object_mut()
            .map(|o| o.entry("data").or_insert_with(|| Value::Object(Map::new())));
        if let Some(Value::Object(d)) = data {
            d.insert("content".into(), Value::String(content));
            d.insert("folded".into(), json!(tokens));
        }
        write.push((group[0].0, first.to_string()));
        drop.extend(group[1..].iter().map(|(idx, _)| *idx));
        i += run;
    }
    (write, drop)
}

/// Bytes the files under `dir` take on disk (allocated blocks).
pub fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The admin endpoints of retention: `POST /api/v1/dlq/purge`, `GET /api/v1/stats` and the
/// same figures for Prometheus at `GET /metrics`, for the admin token only.
pub fn router(app: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/dlq/purge", post(purge))
        .route("/api/v1/stats", get(stats))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), admin_only))
        .with_state(app)
}

async fn admin_only(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let admin = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| super::credentials::same(t.trim().as_bytes(), app.token.as_bytes()));
    if admin {
        return next.run(req).await;
    }
    let who_else = req.headers().contains_key(header::AUTHORIZATION);
    let (status, msg) = if who_else {
        (StatusCode::FORBIDDEN, "only the admin token may do this")
    } else {
        (
            StatusCode::UNAUTHORIZED,
            "missing, invalid or revoked bearer token (Authorization: Bearer TOKEN)",
        )
    };
    ApiError(status, msg.into()).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeBody {
    #[serde(default)]
    ids: Vec<String>,
    #[serde(default)]
    all_dead: bool,
}

/// `POST /api/v1/dlq/purge {"ids": [...]}` or `{"all_dead": true}`: removes dead-lettered jobs
/// and their events. A job that is not dead-lettered refuses the whole request (409), unknown
/// ids 404; nothing is removed then.
async fn purge(State(app): State<Arc<AppState>>, body: Body) -> ApiResult<Json<Value>> {
    let b: PurgeBody = parse(body)?;
    let ids: Vec<String> = if b.all_dead {
        let dead = app.store.list(Some(QueueState::Dead), usize::MAX);
        dead.into_iter().map(|r| r.id).chain(b.ids).collect()
    } else if b.ids.is_empty() {
        return Err(ApiError::bad("name the jobs (`ids`) or set `all_dead`"));
    } else {
        b.ids
    };
    for id in &ids {
        let r = app.store.get(id)?;
        if r.state != QueueState::Dead {
            return Err(ApiError::conflict(format!(
                "job {id} is not dead-lettered (it is {}); only a dead-lettered job can be purged",
                format!("{:?}", r.state).to_lowercase()
            )));
        }
    }
    let (mut purged, mut events) = (Vec::new(), 0);
    for id in ids {
        match app.store.purge(&id) {
            Ok(r) => {
                events += r.events;
                purged.push(id);
            }
            Err(StoreError::NotFound(_)) => {}
            Err(StoreError::Invalid(m)) => return Err(ApiError::conflict(m)),
            Err(e) => return Err(e.into()),
        }
    }
    app.store.flush().await?;
    tracing::info!(jobs = purged.len(), "purged dead-lettered jobs");
    Ok(Json(json!({ "purged": purged, "events": events })))
}

/// `GET /api/v1/stats`: jobs held (in all and by state), events stored, bytes on disk.
async fn stats(State(app): State<Arc<AppState>>) -> Json<Value> {
    let store = app.store.clone();
    let s = tokio::task::spawn_blocking(move || store.stats())
        .await
        .unwrap_or_default();
    Json(json!(s))
}

/// `GET /metrics`: the store's size in the Prometheus text format (a scraper sends the admin
/// token as its bearer credential).
async fn metrics(State(app): State<Arc<AppState>>) -> Response {
    let store = app.store.clone();
    let s = tokio::task::spawn_blocking(move || store.stats())
        .await
        .unwrap_or_default();
    let body = render_metrics(&s) + &super::mesh::metrics::render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

fn render_metrics(s: &super::store::StoreStats) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, samples: &[(String, u64)]| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    };
    gauge(
        "citadel_nexus_store_bytes",
        "Bytes the control plane's store takes on disk.",
        &[(String::new(), s.bytes_on_disk)],
    );
    gauge(
        "citadel_nexus_events",
        "Job events the control plane holds.",
        &[(String::new(), s.events)],
    );
    let by_state: Vec<(String, u64)> = s
        .by_state
        .iter()
        .map(|(state, n)| (format!("{{state=\"{state}\"}}"), *n))
        .collect();
    gauge(
        "citadel_nexus_jobs",
        "Jobs the control plane holds, by state.",
        &by_state,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u64, c: &str) -> (u64, String) {
        let v = json!({"type": "chunk", "timestamp": format!("t{i}"), "data": {"content": c, "index": i}});
        (i, v.to_string())
    }

    #[test]
    fn runs_of_chunks_fold_into_one_and_folding_again_changes_nothing() {
        let mut evs = vec![(0, json!({"type": "claimed"}).to_string())];
        evs.extend((1..=500).map(|i| chunk(i, "ab")));
        evs.push((
            501,
            json!({"type": "end", "data": {"result": 7}}).to_string(),
        ));
        let (write, drop) = fold(&evs);
        assert_eq!(drop.len(), 499);
        assert_eq!(write.len(), 1);
        assert_eq!(write[0].0, 1);
        let v: Value = serde_json::from_str(&write[0].1).unwrap();
        assert_eq!(v["data"]["content"].as_str().unwrap().len(), 1000);
        assert_eq!(v["data"]["folded"], 500);
        assert_eq!(v["data"]["index"], 1);
        assert_eq!(v["timestamp"], "t500");
        let after = vec![evs[0].clone(), write[0].clone(), evs[501].clone()];
        assert_eq!(fold(&after), (vec![], vec![]));
    }

    #[test]
    fn the_sweep_runs_every_quarter_of_the_age_within_bounds() {
        let p = |s| Retention {
            max_age: Some(Duration::from_secs(s)),
            max_finished: None,
        };
        assert_eq!(sweep_every(&p(1)), Duration::from_secs(1));
        assert_eq!(sweep_every(&p(40)), Duration::from_secs(10));
        assert_eq!(sweep_every(&Retention::default()), Duration::from_secs(60));
    }
}
