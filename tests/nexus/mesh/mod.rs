//! The mesh against a real `citadel nexus serve`: registration and addresses (stable across a
//! restart, one key per node, refusals), the network map (one organization only, long-poll,
//! revocation), the relay (real WireGuard handshakes forwarded byte-exact with the source key,
//! other organizations and non-WireGuard frames dropped and counted, a revoked node's socket
//! closed), and the node's side (`citadel::mesh`: key file, coordination, relay client) against
//! the same plane.

mod coordination;
mod node;
mod relay;

use citadel::mesh::key::NodeKey;
use serde_json::{json, Value};

use super::credentials::{as_node, enrol};
use crate::support::plane::{Plane, Resp};

/// A node enrolled into an organization, with its mesh key.
pub(crate) struct Node {
    pub id: String,
    pub token: String,
    pub key: NodeKey,
}

impl Node {
    /// Enrols `host` into `org` (through device authorization) with a fresh key.
    pub fn enrol(p: &Plane, host: &str, org: &str) -> Self {
        let (id, token) = enrol(p, host, Some(org));
        Self {
            id,
            token,
            key: NodeKey::generate().unwrap(),
        }
    }

    pub fn public(&self) -> String {
        self.key.public().to_base64()
    }

    pub fn call(&self, p: &Plane, method: &str, path: &str, body: Option<Value>) -> Resp {
        as_node(p, &self.token, method, path, body)
    }

    /// Registers its key: the answer.
    pub fn register(&self, p: &Plane) -> Value {
        let r = self.call(
            p,
            "POST",
            "/api/fabric/mesh/register",
            Some(json!({"public_key": self.public()})),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// Its map, waiting at most `wait` seconds for a version other than `since`.
    pub fn map(&self, p: &Plane, since: Option<u64>, wait: f64) -> Value {
        let q = since.map(|v| format!("&since={v}")).unwrap_or_default();
        let r = self.call(
            p,
            "GET",
            &format!("/api/fabric/mesh/map?wait={wait}{q}"),
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }
}

/// Two nodes of organization `acme`, enrolled and registered.
pub(crate) fn acme_pair(p: &Plane) -> (Node, Node) {
    let a1 = Node::enrol(p, "a1", "acme");
    let a2 = Node::enrol(p, "a2", "acme");
    a1.register(p);
    a2.register(p);
    (a1, a2)
}

/// Revokes a node's credential with the admin token.
pub(crate) fn revoke(p: &Plane, node: &str) {
    p.json("POST", &format!("/api/v1/credentials/{node}/revoke"), None);
}

/// The value of one sample of the plane's `/metrics` (0 when absent).
pub(crate) fn metric(p: &Plane, sample: &str) -> u64 {
    let r = p.call("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0)
}

/// [`metric`] once it reaches `want` (a frame is counted just after it is queued for its
/// receiver), or its value after 20 s.
pub(crate) fn metric_reaching(p: &Plane, sample: &str, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let v = metric(p, sample);
        if v == want || std::time::Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
