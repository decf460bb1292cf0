//! The console's pages (GET): they read the store and its indexes and render a template. They
//! must never change anything.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::views::*;
use super::{render, session_of, Ui, Viewer};
use crate::index::{Filter, STATES};
use crate::record::{JobRecord, QueueState};
use crate::store::now_ms;

type St = State<Arc<Ui>>;

/// Jobs listed per page.
pub const PAGE: usize = 50;
/// Minutes of throughput on the overview.
const MINUTES: u64 = 10;

pub async fn login(State(ui): St, headers: axum::http::HeaderMap) -> Response {
    let role = session_of(&ui, &headers).map(|(_, r)| r);
    render(&LoginPage {
        frame: Frame::new("Sign in", "login", role),
        error: None,
    })
}

pub async fn overview(State(ui): St, Extension(v): Extension<Viewer>) -> Response {
    let now = now_ms();
    let index = ui.app.store.index();
    let counts: Vec<(String, usize)> = index
        .counts()
        .into_iter()
        .map(|(s, n)| (state_name(s), n))
        .collect();
    let total = counts.iter().map(|(_, n)| n).sum();
    let dead = counts
        .iter()
        .find(|(s, _)| s == "dead")
        .map_or(0, |(_, n)| *n);
    let per = index.finished_per_minute(now, MINUTES);
    let max = per.iter().copied().max().unwrap_or(0).max(1);
    let minutes = per
        .iter()
        .enumerate()
        .map(|(i, n)| Minute {
            label: match MINUTES - 1 - i as u64 {
                0 => "this minute".to_string(),
                back => format!("{back} min ago"),
            },
            finished: *n,
            max,
        })
        .collect();
    let sum: u64 = per.iter().sum();
    let (mut online, mut stale, mut offline) = (0, 0, 0);
    for n in ui.app.store.nodes().unwrap_or_default() {
        match health(now.saturating_sub(n.last_seen_ms)) {
            "online" => online += 1,
            "stale" => stale += 1,
            _ => offline += 1,
        }
    }
    render(&OverviewPage {
        frame: Frame::new("Overview", "overview", Some(v.role)),
        counts,
        total,
        dead,
        minutes,
        per_minute: format!(
            "{sum} finished in {MINUTES} minutes: {:.1} per minute",
            sum as f64 / MINUTES as f64
        ),
        online,
        stale,
        offline,
    })
}

/// One page of the jobs `filter` and the search admit, newest first, and whether more follow.
pub fn page_of(ui: &Ui, filter: &Filter, q: Option<&str>, page: usize) -> (Vec<JobRow>, bool) {
    let store = &ui.app.store;
    let (ids, more) = store.index().page(filter, page * PAGE, PAGE, |id| {
        q.is_none_or(|q| id.contains(q) || store.get(id).is_ok_and(|r| job_matches(&r, q)))
    });
    let rows = ids
        .iter()
        .filter_map(|id| {
            let r = store.get(id).ok()?;
            let worker = store.index().entry(id).and_then(|e| e.worker);
            Some(JobRow::of(&r, worker))
        })
        .collect();
    (rows, more)
}

pub async fn jobs(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Query(form): Query<FilterForm>,
) -> Response {
    let (rows, more, error) = match form.filter(now_ms()) {
        Ok(f) => {
            let (rows, more) = page_of(&ui, &f, form.search(), form.page);
            (rows, more, None)
        }
        Err(e) => (Vec::new(), false, Some(e)),
    };
    let link = |p: usize| format!("/ui/jobs?{}", form.query(p));
    render(&JobsPage {
        frame: Frame::new("Jobs", "jobs", Some(v.role)),
        states: STATES.iter().map(|s| state_name(*s)).collect(),
        rows,
        error,
        prev: (form.page > 0).then(|| link(form.page - 1)),
        next: more.then(|| link(form.page + 1)),
        page: form.page,
        form,
    })
}

pub async fn submit_form(Extension(v): Extension<Viewer>) -> Response {
    render(&SubmitPage {
        frame: Frame::new("Submit", "submit", Some(v.role)),
        error: None,
        job_type: String::new(),
        payload: "{}".into(),
        max_attempts: String::new(),
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A job's stored events: the timeline and the text of its chunks.
fn timeline(ui: &Ui, id: &str) -> (Vec<EventRow>, String, Option<u64>) {
    let mut rows = Vec::new();
    let mut output = String::new();
    let mut last = None;
    for (idx, text) in ui.app.store.events_from(id, 0).unwrap_or_default() {
        let ev: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        let kind = ev["type"].as_str().unwrap_or("message").to_string();
        if kind == "chunk" {
            output.push_str(ev["data"]["content"].as_str().unwrap_or(""));
        }
        rows.push(EventRow {
            index: idx,
            kind,
            at: ev["timestamp"].as_str().unwrap_or("").to_string(),
        });
        last = Some(idx);
    }
    (rows, output, last)
}

pub async fn job(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let Ok(r) = ui.app.store.get(&id) else {
        return (StatusCode::NOT_FOUND, "no such job").into_response();
    };
    let (events, output, last) = timeline(&ui, &id);
    let stream = (!r.state.is_final()).then(|| {
        let after = last.map(|n| format!("?after={n}")).unwrap_or_default();
        format!("/ui/jobs/{}/events{after}", encode(&id))
    });
    let worker = ui.app.store.index().entry(&id).and_then(|e| e.worker);
    render(&JobPage {
        frame: Frame::new(format!("Job {id}"), "jobs", Some(v.role)),
        row: JobRow::of(&r, worker),
        updated_at: r.updated_at.clone(),
        payload: pretty(&Value::Object(r.payload.clone())),
        result: r.result.as_ref().map(pretty).or_else(|| r.output.clone()),
        error: r.error.clone(),
        errors: r.errors.clone(),
        cancel_requested: r.cancel_requested,
        output,
        events,
        stream,
        cancellable: !r.state.is_final() && !r.cancel_requested,
        requeueable: r.state == QueueState::Dead,
    })
}

/// The dead letters a filter form admits (every one: the list is not paginated).
pub fn dead_matching(ui: &Ui, form: &FilterForm) -> Result<Vec<JobRecord>, String> {
    let mut f = form.filter(now_ms())?;
    f.state = Some(QueueState::Dead);
    let store = &ui.app.store;
    let q = form.search();
    let (ids, _) = store.index().page(&f, 0, usize::MAX, |id| {
        q.is_none_or(|q| store.get(id).is_ok_and(|r| job_matches(&r, q)))
    });
    Ok(ids.iter().filter_map(|id| store.get(id).ok()).collect())
}

pub async fn dlq(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Query(form): Query<FilterForm>,
) -> Response {
    let rows = dead_matching(&ui, &form).unwrap_or_default();
    let rows = rows.iter().map(|r| JobRow::of(r, None)).collect();
    render(&DlqPage {
        frame: Frame::new("Dead letters", "dlq", Some(v.role)),
        purge_href: format!("/ui/dlq/purge?{}", form.query(0)),
        rows,
        form,
    })
}

pub async fn purge_confirm(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Query(form): Query<FilterForm>,
) -> Response {
    if let Some(r) = v.refused() {
        return r;
    }
    let count = dead_matching(&ui, &form).map_or(0, |l| l.len());
    render(&ConfirmPage {
        frame: Frame::new("Purge dead letters", "dlq", Some(v.role)),
        form,
        count,
    })
}

pub async fn nodes(State(ui): St, Extension(v): Extension<Viewer>) -> Response {
    let now = now_ms();
    let mut list = ui.app.store.nodes().unwrap_or_default();
    list.sort_by(|a, b| a.name.cmp(&b.name));
    render(&NodesPage {
        frame: Frame::new("Nodes", "nodes", Some(v.role)),
        rows: list.iter().map(|n| NodeRow::of(n, now)).collect(),
    })
}

pub async fn node(
    State(ui): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let found = ui
        .app
        .store
        .nodes()
        .unwrap_or_default()
        .into_iter()
        .find(|n| n.id == id);
    let Some(n) = found else {
        return (StatusCode::NOT_FOUND, "no such node").into_response();
    };
    render(&NodePage {
        frame: Frame::new(format!("Node {}", n.name), "nodes", Some(v.role)),
        node: NodeRow::of(&n, now_ms()),
        gpus: gpus_of(&n),
        services: services_of(&n),
        report: n.report.as_ref().map(pretty).unwrap_or_default(),
    })
}
