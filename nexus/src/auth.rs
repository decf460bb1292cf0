//! Who may call what on the control plane (docs/control-plane.md#credentials-and-organizations):
//! the authenticated [`Principal`] (the admin token, or one node's credential with its
//! organization), which endpoints a node may call ([`need`]: what a worker does) and which only
//! the admin token may ([`Need::Admin`]: submit, cancel, requeue, list, approve devices, manage
//! credentials), and the organization check on a job. Pure decisions on the method and path; it
//! must never read a secret, do I/O or log.

use std::fmt;

/// The organization of the zero-config setup, of jobs submitted without one, and of nodes
/// approved without `--org`.
pub use citadel_transports::control_plane::wire::DEFAULT_ORG;

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The control plane's own token (`DATA/token`).
    Admin,
    /// An approved node, with its own credential.
    Node { node_id: String },
}

/// The authenticated caller: its role and the one organization it works for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// The organization whose jobs it claims (the admin works as a node of [`DEFAULT_ORG`], which
    /// is how the embedded control plane's own worker runs with no extra step).
    pub org: String,
}

impl Principal {
    pub fn admin() -> Self {
        Self {
            role: Role::Admin,
            org: DEFAULT_ORG.to_string(),
        }
    }

    pub fn node(node_id: impl Into<String>, org: impl Into<String>) -> Self {
        Self {
            role: Role::Node {
                node_id: node_id.into(),
            },
            org: org.into(),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    pub fn node_id(&self) -> Option<&str> {
        match &self.role {
            Role::Admin => None,
            Role::Node { node_id } => Some(node_id),
        }
    }

    /// Whether it may touch a job of `job_org`: the admin any job, a node its organization's.
    pub fn may_touch(&self, job_org: &str) -> bool {
        self.is_admin() || self.org == job_org
    }
}

/// What an endpoint needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// What a worker does: claim, renew, settle, events, batches of those, status, heartbeat, the job feed, the
    /// job it holds (its cancellation flag). A node credential may, for its organization.
    Worker,
    /// Everything else: the admin token alone.
    Admin,
}

/// The endpoint a request names: `method` and the path under `/api/v1` (e.g. `/jobs/claim`).
/// Anything not listed as a worker's needs the admin token.
pub fn need(method: &str, path: &str) -> Need {
    let segs = segments(path);
    let job = |id: &str| !matches!(id, "next" | "claim" | "batch" | "");
    let worker = match (method, segs.as_slice()) {
        ("GET", ["health"] | ["ws"] | ["jobs", "next"]) => true,
        ("POST", ["jobs", "claim" | "batch"] | ["nodes", "heartbeat"]) => true,
        ("GET", ["jobs", id]) => job(id),
        ("POST", ["jobs", id, "lease" | "settle" | "events" | "status"]) => job(id),
        _ => false,
    };
    if worker {
        Need::Worker
    } else {
        Need::Admin
    }
}

/// The job a worker endpoint is about (percent-decoded), if any: `/jobs/{id}[/…]`.
pub fn job_of(path: &str) -> Option<String> {
    match segments(path).as_slice() {
        ["jobs", id, ..] if !matches!(*id, "next" | "claim" | "batch" | "") => {
            Some(percent_decode(id))
        }
        _ => None,
    }
}

/// Why a request was refused (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied(pub String);

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `who` may call an endpoint that needs `need`.
pub fn authorize(who: &Principal, need: Need) -> Result<(), Denied> {
    match (need, &who.role) {
        (Need::Worker, _) | (Need::Admin, Role::Admin) => Ok(()),
        (Need::Admin, Role::Node { node_id }) => Err(Denied(format!(
            "node {node_id} used its node credential on an endpoint that needs the control \
             plane's admin token (a node may only claim, renew, settle, post events, report \
             status and send heartbeats)"
        ))),
    }
}

/// An organization name: 1 to 64 of `a-z 0-9 - _ .`.
pub fn valid_org(org: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&org.len())
        && org
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "organization {org:?} must be 1 to 64 characters of a-z, 0-9, `-`, `_` and `.`"
        ))
    }
}

fn segments(path: &str) -> Vec<&str> {
    path.strip_prefix('/').unwrap_or(path).split('/').collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WORKER: &[(&str, &str)] = &[
        ("GET", "/health"),
        ("GET", "/ws"),
        ("GET", "/jobs/next"),
        ("POST", "/jobs/claim"),
        ("POST", "/jobs/batch"),
        ("GET", "/jobs/j1"),
        ("POST", "/jobs/j1/lease"),
        ("POST", "/jobs/j1/settle"),
        ("POST", "/jobs/j1/events"),
        ("POST", "/jobs/j1/status"),
        ("POST", "/nodes/heartbeat"),
    ];
    const ADMIN: &[(&str, &str)] = &[
        ("POST", "/jobs"),
        ("GET", "/jobs"),
        ("POST", "/jobs/j1/cancel"),
        ("GET", "/jobs/j1/events"),
        ("GET", "/dlq"),
        ("POST", "/dlq/j1/requeue"),
        ("GET", "/nodes"),
        ("GET", "/nodes/n1"),
        ("POST", "/device-auth/approve"),
        ("GET", "/device-auth/pending"),
        ("GET", "/credentials"),
        ("POST", "/credentials/n1/revoke"),
        ("DELETE", "/jobs/j1"),
        ("POST", "/jobs/next"),
        ("GET", "/no/such/thing"),
    ];

    #[test]
    fn a_node_may_do_what_a_worker_does_and_nothing_else() {
        let node = Principal::node("n1", "acme");
        for (m, p) in WORKER {
            assert_eq!(need(m, p), Need::Worker, "{m} {p}");
            assert!(authorize(&node, need(m, p)).is_ok(), "{m} {p}");
        }
        for (m, p) in ADMIN {
            assert_eq!(need(m, p), Need::Admin, "{m} {p}");
            let e = authorize(&node, need(m, p)).unwrap_err();
            assert!(e.0.contains("admin token") && e.0.contains("n1"), "{e}");
            assert!(authorize(&Principal::admin(), need(m, p)).is_ok());
        }
    }

    #[test]
    fn organizations_fence_jobs_and_names_are_checked() {
        let node = Principal::node("n1", "acme");
        assert!(node.may_touch("acme") && !node.may_touch(DEFAULT_ORG));
        assert!(Principal::admin().may_touch("acme"));
        assert_eq!(Principal::admin().org, DEFAULT_ORG);
        assert_eq!(job_of("/jobs/a%2Fb/settle").as_deref(), Some("a/b"));
        assert_eq!(job_of("/jobs/j1").as_deref(), Some("j1"));
        assert_eq!(job_of("/jobs/claim"), None);
        assert_eq!(job_of("/nodes/heartbeat"), None);
        assert!(valid_org("acme-2.eu_1").is_ok());
        for bad in ["", "Acme", "a b", "x/y", &"a".repeat(65)] {
            assert!(valid_org(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        /// Whatever the method and path, a node is refused everything but the worker's list, and
        /// the admin nothing.
        #[test]
        fn only_the_worker_list_is_open_to_nodes(
            method in prop::sample::select(vec!["GET", "POST", "PUT", "DELETE"]),
            segs in prop::collection::vec("[a-z%0-9]{0,8}", 0..5),
        ) {
            let path = format!("/{}", segs.join("/"));
            let node = Principal::node("n", "o");
            // The model: the path with its job id written `j1`, looked up in the worker's list.
            let generic: Vec<&str> = segs.iter().enumerate().map(|(i, s)| {
                let id = i == 1 && segs[0] == "jobs" && !matches!(s.as_str(), "next" | "claim" | "batch" | "");
                if id { "j1" } else { s.as_str() }
            }).collect();
            let generic = format!("/{}", generic.join("/"));
            let listed = WORKER.iter().any(|(m, p)| *m == method && *p == generic);
            prop_assert_eq!(authorize(&node, need(method, &path)).is_ok(), listed, "{} {}", method, path);
            prop_assert!(authorize(&Principal::admin(), need(method, &path)).is_ok());
        }
    }
}
