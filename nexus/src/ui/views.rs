//! What the console's pages show: the askama templates (`nexus/templates/`, HTML-escaped by
//! their extension) and the pure conversions from records to the rows they print (node health
//! from heartbeat age, the jobs filter read from and written back to the URL query). No I/O
//! here, and nothing that holds a token.

use std::collections::BTreeMap;

use askama::Template;
use serde_json::Value;

use super::session::Role;
use crate::index::Filter;
use crate::record::{JobRecord, NodeRecord, QueueState};

/// Heartbeat age up to which a node is `online`; then `stale` until it is `offline`.
pub const STALE_AFTER_MS: u64 = 30_000;

/// A node's health from the age of its last heartbeat.
pub fn health(age_ms: u64) -> &'static str {
    if age_ms < STALE_AFTER_MS {
        "online"
    } else if age_ms < crate::store::NODE_OFFLINE_AFTER.as_millis() as u64 {
        "stale"
    } else {
        "offline"
    }
}

/// What every page's frame shows.
#[derive(Debug, Clone)]
pub struct Frame {
    pub title: String,
    pub nav: &'static str,
    pub signed_in: bool,
    pub can_act: bool,
    pub role: &'static str,
}

impl Frame {
    pub fn new(title: impl Into<String>, nav: &'static str, role: Option<Role>) -> Self {
        Frame {
            title: title.into(),
            nav,
            signed_in: role.is_some(),
            can_act: role.is_some_and(Role::may_act),
            role: match role {
                Some(Role::Admin) => "admin",
                Some(Role::ReadOnly) => "read-only",
                None => "",
            },
        }
    }
}

/// The jobs filter as the URL query carries it (every field as typed).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct FilterForm {
    #[serde(default)]
    pub state: String,
    #[serde(default, rename = "type")]
    pub job_type: String,
    #[serde(default)]
    pub node: String,
    /// How far back (`15m`, `1h`, `7d`).
    #[serde(default)]
    pub since: String,
    /// An id, or text of the payload.
    #[serde(default)]
    pub q: String,
    /// The page, from 0.
    #[serde(default)]
    pub page: usize,
}

impl FilterForm {
    /// The index filter, or why a field is wrong.
    pub fn filter(&self, now_ms: u64) -> Result<Filter, String> {
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        let state = match opt(&self.state) {
            None => None,
            Some(s) => Some(QueueState::parse(&s).ok_or_else(|| format!("unknown state {s:?}"))?),
        };
        let since_ms = match opt(&self.since) {
            None => None,
            Some(s) => {
                let d = humantime::parse_duration(&s)
                    .map_err(|e| format!("`since` {s:?} is not a duration like 15m or 2h: {e}"))?;
                Some(now_ms.saturating_sub(d.as_millis() as u64))
            }
        };
        Ok(Filter {
            state,
            job_type: opt(&self.job_type),
            worker: opt(&self.node),
            since_ms,
            until_ms: None,
        })
    }

    /// The search text, if any.
    pub fn search(&self) -> Option<&str> {
        Some(self.q.trim()).filter(|q| !q.is_empty())
    }

    /// The query string of this filter at `page`.
    pub fn query(&self, page: usize) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("state", &self.state),
            ("type", &self.job_type),
            ("node", &self.node),
            ("since", &self.since),
            ("q", &self.q),
        ] {
            if !v.trim().is_empty() {
                parts.push(format!("{k}={}", encode(v.trim())));
            }
        }
        if page > 0 {
            parts.push(format!("page={page}"));
        }
        parts.join("&")
    }
}

/// Percent-encodes everything but the unreserved characters.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Whether a job matches a search: its id contains it, or its payload's JSON text does.
pub fn job_matches(r: &JobRecord, q: &str) -> bool {
    r.id.contains(q) || Value::Object(r.payload.clone()).to_string().contains(q)
}

pub fn state_name(s: QueueState) -> String {
    format!("{s:?}").to_lowercase()
}

/// One row of the jobs list.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: String,
    /// The id percent-encoded, for paths.
    pub enc: String,
    pub href: String,
    pub job_type: String,
    pub state: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub created_at: String,
    pub worker: String,
    pub reason: String,
}

impl JobRow {
    pub fn of(r: &JobRecord, worker: Option<String>) -> Self {
        JobRow {
            href: format!("/ui/jobs/{}", encode(&r.id)),
            enc: encode(&r.id),
            id: r.id.clone(),
            job_type: r.job_type.clone(),
            state: state_name(r.state),
            attempts: r.attempts,
            max_attempts: r.max_attempts,
            created_at: r.created_at.clone(),
            worker: worker.unwrap_or_default(),
            reason: r
                .dead_reason
                .clone()
                .or_else(|| r.error.clone())
                .unwrap_or_default(),
        }
    }
}

/// One node, its health computed from its last heartbeat's age.
#[derive(Debug, Clone)]
pub struct NodeRow {
    pub id: String,
    pub href: String,
    pub name: String,
    pub ip: String,
    pub health: &'static str,
    pub last_seen: String,
    pub age_s: u64,
    pub gpus: usize,
}

impl NodeRow {
    pub fn of(n: &NodeRecord, now_ms: u64) -> Self {
        let age = now_ms.saturating_sub(n.last_seen_ms);
        NodeRow {
            href: format!("/ui/nodes/{}", encode(&n.id)),
            id: n.id.clone(),
            name: n.name.clone(),
            ip: n.ip_address.clone(),
            health: health(age),
            last_seen: crate::store::rfc3339_ms(n.last_seen_ms),
            age_s: age / 1000,
            gpus: gpus_of(n).len(),
        }
    }
}

/// One GPU of a node's last report.
#[derive(Debug, Clone)]
pub struct GpuRow {
    pub index: String,
    pub name: String,
    pub utilization: String,
    pub memory: String,
    pub temperature: String,
    pub power: String,
}

fn field(v: &Value, k: &str) -> Option<f64> {
    v.get(k).and_then(Value::as_f64)
}

fn gib(bytes: f64) -> String {
    format!("{:.1} GiB", bytes / (1u64 << 30) as f64)
}

/// The GPUs of a node's last report (`report.gpu`).
pub fn gpus_of(n: &NodeRecord) -> Vec<GpuRow> {
    let list = n
        .report
        .as_ref()
        .and_then(|r| r.get("gpu"))
        .and_then(Value::as_array);
    let dash = || "—".to_string();
    list.into_iter()
        .flatten()
        .map(|g| GpuRow {
            index: g.get("index").map(Value::to_string).unwrap_or_else(dash),
            name: g
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string(),
            utilization: field(g, "utilization_percent").map_or_else(dash, |u| format!("{u}%")),
            memory: match (
                field(g, "memory_used_bytes"),
                field(g, "memory_total_bytes"),
            ) {
                (Some(u), Some(t)) => format!("{} / {}", gib(u), gib(t)),
                (None, Some(t)) => gib(t),
                _ => dash(),
            },
            temperature: field(g, "temperature_c").map_or_else(dash, |t| format!("{t} °C")),
            power: field(g, "power_watts").map_or_else(dash, |p| format!("{p:.0} W")),
        })
        .collect()
}

/// One service of a node's last report: its name and each other field as text.
#[derive(Debug, Clone)]
pub struct ServiceRow {
    pub name: String,
    pub detail: String,
}

pub fn services_of(n: &NodeRecord) -> Vec<ServiceRow> {
    let list = n
        .report
        .as_ref()
        .and_then(|r| r.get("services"))
        .and_then(Value::as_array);
    list.into_iter()
        .flatten()
        .map(|s| {
            let name = s.get("name").and_then(Value::as_str).unwrap_or("?");
            let rest: BTreeMap<&String, String> = s
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "name")
                .map(|(k, v)| (k, v.as_str().map_or_else(|| v.to_string(), str::to_string)))
                .collect();
            let detail = rest
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            ServiceRow {
                name: name.to_string(),
                detail,
            }
        })
        .collect()
}

/// One event of a job's timeline.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub index: u64,
    pub kind: String,
    pub at: String,
}

#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    pub frame: Frame,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Minute {
    pub label: String,
    pub finished: u64,
    pub max: u64,
}

#[derive(Template)]
#[template(path = "overview.html")]
pub struct OverviewPage {
    pub frame: Frame,
    pub counts: Vec<(String, usize)>,
    pub total: usize,
    pub dead: usize,
    pub minutes: Vec<Minute>,
    pub per_minute: String,
    pub online: usize,
    pub stale: usize,
    pub offline: usize,
}

#[derive(Template)]
#[template(path = "jobs.html")]
pub struct JobsPage {
    pub frame: Frame,
    pub form: FilterForm,
    pub states: Vec<String>,
    pub rows: Vec<JobRow>,
    pub error: Option<String>,
    pub prev: Option<String>,
    pub next: Option<String>,
    pub page: usize,
}

#[derive(Template)]
#[template(path = "submit.html")]
pub struct SubmitPage {
    pub frame: Frame,
    pub error: Option<String>,
    pub job_type: String,
    pub payload: String,
    pub max_attempts: String,
}

#[derive(Template)]
#[template(path = "job.html")]
pub struct JobPage {
    pub frame: Frame,
    pub row: JobRow,
    pub updated_at: String,
    pub payload: String,
    pub result: Option<String>,
    pub error: Option<String>,
    pub errors: Vec<String>,
    pub cancel_requested: bool,
    pub output: String,
    pub events: Vec<EventRow>,
    pub stream: Option<String>,
    pub cancellable: bool,
    pub requeueable: bool,
}

#[derive(Template)]
#[template(path = "dlq.html")]
pub struct DlqPage {
    pub frame: Frame,
    pub form: FilterForm,
    pub rows: Vec<JobRow>,
    pub purge_href: String,
}

#[derive(Template)]
#[template(path = "confirm.html")]
pub struct ConfirmPage {
    pub frame: Frame,
    pub form: FilterForm,
    pub count: usize,
}

#[derive(Template)]
#[template(path = "nodes.html")]
pub struct NodesPage {
    pub frame: Frame,
    pub rows: Vec<NodeRow>,
}

#[derive(Template)]
#[template(path = "node.html")]
pub struct NodePage {
    pub frame: Frame,
    pub node: NodeRow,
    pub gpus: Vec<GpuRow>,
    pub services: Vec<ServiceRow>,
    pub report: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn health_follows_heartbeat_age() {
        assert_eq!(health(0), "online");
        assert_eq!(health(STALE_AFTER_MS - 1), "online");
        assert_eq!(health(STALE_AFTER_MS), "stale");
        assert_eq!(health(89_999), "stale");
        assert_eq!(health(90_000), "offline");
    }

    #[test]
    fn the_filter_reads_the_query() {
        let f = FilterForm {
            state: "dead".into(),
            since: "1h".into(),
            ..FilterForm::default()
        };
        let got = f.filter(10_000_000).unwrap();
        assert_eq!(got.state, Some(QueueState::Dead));
        assert_eq!(got.since_ms, Some(10_000_000 - 3_600_000));
        assert!(FilterForm {
            state: "nope".into(),
            ..FilterForm::default()
        }
        .filter(0)
        .is_err());
        assert!(FilterForm {
            since: "soon".into(),
            ..FilterForm::default()
        }
        .filter(0)
        .is_err());
    }

    proptest! {
        /// The query a filter writes reads back as the same filter.
        #[test]
        fn the_query_round_trips(state in "[a-z]{0,6}", ty in "\\PC{0,12}", q in "\\PC{0,12}", page in 0usize..5) {
            let f = FilterForm { state, job_type: ty, q, page, ..FilterForm::default() };
            let back: FilterForm = serde_urlencoded_like(&f.query(page));
            prop_assert_eq!(back.state, f.state.trim());
            prop_assert_eq!(back.job_type, f.job_type.trim());
            prop_assert_eq!(back.q, f.q.trim());
            prop_assert_eq!(back.page, page);
        }
    }

    /// Reads a query the way axum's `Query` does.
    fn serde_urlencoded_like(q: &str) -> FilterForm {
        let uri: axum::http::Uri = format!("/x?{q}").parse().unwrap();
        axum::extract::Query::<FilterForm>::try_from_uri(&uri)
            .unwrap()
            .0
    }
}
