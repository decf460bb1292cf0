//! Registration and the network map on a real control plane.

use serde_json::{json, Value};

use super::{acme_pair, revoke, Node};
use crate::support::plane::{raw, Plane};

fn peers(map: &Value) -> Vec<String> {
    map["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn addresses_are_unique_per_org_stable_across_a_restart_and_keys_are_not_shared() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    let mut p = Plane::start(&dir);
    let a1 = Node::enrol(&p, "a1", "acme");
    let a2 = Node::enrol(&p, "a2", "acme");
    let b1 = Node::enrol(&p, "b1", "beta");
    let r1 = a1.register(&p);
    assert_eq!(r1["node_id"], a1.id.as_str());
    assert_eq!(
        (r1["org_id"].clone(), r1["prefix"].clone()),
        (json!("acme"), json!("100.64.0.0/10"))
    );
    let ip1 = r1["mesh_ip"].as_str().unwrap().to_string();
    assert!(ip1.starts_with("100."), "{ip1}");
    let ip2 = a2.register(&p)["mesh_ip"].clone();
    assert_ne!(ip2, json!(ip1));
    b1.register(&p);
    assert_eq!(
        a1.register(&p)["mesh_ip"],
        ip1.as_str(),
        "registering again changes nothing"
    );

    // A key is one node's: another node of the same or another organization is refused.
    let theft = json!({"public_key": a1.public()});
    for thief in [&a2, &b1] {
        let r = thief.call(&p, "POST", "/api/fabric/mesh/register", Some(theft.clone()));
        assert_eq!(r.status, 409, "{}", r.body);
    }
    // Malformed keys are 400.
    for bad in [
        json!({"public_key": "not base64!"}),
        json!({"public_key": "AAAA"}),
        json!({}),
    ] {
        let r = a1.call(&p, "POST", "/api/fabric/mesh/register", Some(bad.clone()));
        assert_eq!(r.status, 400, "{bad}: {}", r.body);
    }
    // The admin token is not a node; a wrong credential is no one.
    let admin = p.call(
        "POST",
        "/api/fabric/mesh/register",
        Some(&theft.to_string()),
    );
    assert_eq!(admin.status, 403, "{}", admin.body);
    let forged = format!("Bearer cn1.{}.{}", a1.id, "0".repeat(64));
    for auth in [vec![], vec![("Authorization", forged.as_str())]] {
        let r = raw(
            p.port,
            "POST",
            "/api/fabric/mesh/register",
            &auth,
            Some(&theft.to_string()),
        );
        assert_eq!(r.status, 401, "{}", r.body);
        let r = raw(p.port, "GET", "/api/fabric/mesh/map", &auth, None);
        assert_eq!(r.status, 401, "{}", r.body);
    }
    assert_eq!(p.call("GET", "/api/fabric/mesh/map", None).status, 403);

    // After a restart the same key gets the same address.
    p.kill9();
    let p = Plane::start_on(&dir, p.port);
    assert_eq!(a1.register(&p)["mesh_ip"], ip1.as_str());
    assert_eq!(a1.map(&p, None, 0.0)["peers"][0]["mesh_ip"], ip2);
}

#[test]
fn a_map_shows_its_own_organization_only_and_a_long_poll_wakes_on_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let a1 = Node::enrol(&p, "a1", "acme");
    // Not registered yet: no map.
    let r = a1.call(&p, "GET", "/api/fabric/mesh/map", None);
    assert_eq!(r.status, 404, "{}", r.body);
    let a2 = Node::enrol(&p, "a2", "acme");
    let b1 = Node::enrol(&p, "b1", "beta");
    for n in [&a1, &a2, &b1] {
        n.register(&p);
    }
    let m = a1.map(&p, None, 0.0);
    assert_eq!(m["self"]["node_id"], a1.id.as_str());
    assert_eq!(m["self"]["public_key"], a1.public());
    assert_eq!(m["self"]["name"], "a1");
    assert_eq!(peers(&m), [a2.id.as_str()]);
    assert_eq!(m["peers"][0]["public_key"], a2.public());
    let mb = b1.map(&p, None, 0.0);
    assert!(peers(&mb).is_empty(), "{mb}");
    assert!(!mb.to_string().contains(&a1.public()), "{mb}");

    // Unchanged: the poll ends at its wait with the same version.
    let v = m["version"].as_u64().unwrap();
    assert_eq!(a1.map(&p, Some(v), 0.3)["version"], v);
    // Changed while a poll waits: it answers with the new version.
    let poll = std::thread::scope(|s| {
        let waiting = s.spawn(|| a1.map(&p, Some(v), 25.0));
        let a3 = Node::enrol(&p, "a3", "acme");
        a3.register(&p);
        (waiting.join().unwrap(), a3.id)
    });
    let (woke, a3) = poll;
    assert_ne!(woke["version"], v);
    assert!(peers(&woke).contains(&a3), "{woke}");
    // Another organization's change does not move this map's version.
    let v = woke["version"].as_u64().unwrap();
    Node::enrol(&p, "b2", "beta").register(&p);
    assert_eq!(a1.map(&p, Some(v), 0.3)["version"], v);

    // A revoked node leaves its organization's map.
    revoke(&p, &a2.id);
    let after = a1.map(&p, Some(v), 25.0);
    assert_ne!(after["version"], v);
    assert_eq!(peers(&after), [a3]);
}

#[test]
fn a_node_approved_into_another_organization_leaves_the_old_ones_map() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (a1, a2) = acme_pair(&p);
    let before = a1.map(&p, None, 0.0);
    assert_eq!(peers(&before), [a2.id.as_str()]);
    // The same machine approved again, into another organization: same node, new credential.
    let moved = Node::enrol(&p, "a2", "beta");
    assert_eq!(moved.id, a2.id);
    let v = before["version"].as_u64().unwrap();
    let after = a1.map(&p, Some(v), 25.0);
    assert!(peers(&after).is_empty(), "{after}");
    // Its old key stays acme's; a new key makes it a node of beta, unseen by acme.
    let old = json!({"public_key": a2.public()});
    let r = moved.call(&p, "POST", "/api/fabric/mesh/register", Some(old));
    assert_eq!(r.status, 409, "{}", r.body);
    assert_eq!(moved.register(&p)["org_id"], "beta");
    assert!(peers(&moved.map(&p, None, 0.0)).is_empty());
    assert!(peers(&a1.map(&p, None, 0.0)).is_empty());
}
