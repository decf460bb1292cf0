//! The node's side (`citadel::mesh`) against a real control plane: `citadel init` writes the
//! key, the coordinator registers and follows the map, the relay client bridges the data
//! plane's channels, and a revoked node's coordination and relay end with the refusal.

use std::time::Duration;

use bytes::Bytes;
use citadel::mesh::coord::{CoordError, Coordinator, Watching};
use citadel::mesh::{relay, PeerKey};
use tokio::sync::mpsc;

use super::{revoke, Node};
use crate::support::plane::{Plane, BIN};

#[test]
fn init_creates_a_private_mesh_key_and_a_new_one_each_time() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let init = |force: bool| {
        let mut c = std::process::Command::new(BIN);
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("CITADEL_")) {
            c.env_remove(k);
        }
        c.arg("--data-dir")
            .arg(&data)
            .args(["init", "--offline", "--name", "n"]);
        if force {
            c.arg("--force");
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = String::from_utf8_lossy(&out.stdout).into_owned();
        let file = data.join("mesh.key");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let key = citadel::mesh::key::load_or_create(&data).unwrap();
        let secret = std::fs::read_to_string(&file).unwrap();
        assert!(!out.contains(secret.trim()), "init printed the key");
        key.public()
    };
    let first = init(false);
    assert_ne!(init(true), first, "a new identity gets a new key");
}

async fn start(p: &Plane, n: &Node) -> Watching {
    let c = Coordinator::new(&p.url(), &n.token, n.key.public()).unwrap();
    tokio::time::timeout(Duration::from_secs(30), c.start())
        .await
        .expect("registration took over 30 s")
        .unwrap()
}

type Channels = (
    mpsc::Sender<(PeerKey, Bytes)>,
    mpsc::Receiver<(PeerKey, Bytes)>,
);

/// Starts a node's relay client: the data plane's ends (outbound sender, inbound receiver).
fn bridge(p: &Plane, n: &Node) -> (Channels, tokio::task::JoinHandle<Result<(), CoordError>>) {
    let (in_tx, in_rx) = mpsc::channel(64);
    let (out_tx, out_rx) = mpsc::channel(64);
    let task = relay::spawn(&p.url(), &n.token, in_tx, out_rx).unwrap();
    ((out_tx, in_rx), task)
}

/// Sends `datagram` from one bridge to `to` until the other bridge receives it (the relay
/// client may still be connecting: datagrams are dropped until then, as on a network).
async fn deliver(from: &Channels, to: &mut Channels, dest: PeerKey, datagram: &[u8]) -> PeerKey {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        from.0
            .send((dest, Bytes::copy_from_slice(datagram)))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_millis(200), to.1.recv()).await {
            Ok(Some((src, got))) => {
                assert_eq!(&got[..], datagram);
                return src;
            }
            Ok(None) => panic!("the relay client stopped"),
            Err(_) => assert!(
                tokio::time::Instant::now() < deadline,
                "nothing relayed in 20 s"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registers_follows_its_map_and_relays_until_revoked() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let a1 = Node::enrol(&p, "a1", "acme");
    let a2 = Node::enrol(&p, "a2", "acme");
    let mut w1 = start(&p, &a1).await;
    let w2 = start(&p, &a2).await;
    assert_eq!(w1.registration.org_id, "acme");
    assert_ne!(w1.registration.mesh_ip, w2.registration.mesh_ip);
    assert_eq!(w2.map.borrow().peers[0].public_key, a1.key.public());

    // a1's watch sees a2 (registered after a1's first map), then a3.
    let a3 = Node::enrol(&p, "a3", "acme");
    a3.register(&p);
    let seen = tokio::time::timeout(
        Duration::from_secs(60),
        w1.map.wait_for(|m| m.peers.len() == 2),
    )
    .await
    .expect("the map did not follow within 60 s")
    .unwrap()
    .clone();
    assert_eq!(seen.me.mesh_ip, w1.registration.mesh_ip);
    let ids: Vec<&str> = seen.peers.iter().map(|p| p.node_id.as_str()).collect();
    assert!(
        ids.contains(&a2.id.as_str()) && ids.contains(&a3.id.as_str()),
        "{ids:?}"
    );

    // The relay client bridges the channels both ways.
    let (c1, t1) = bridge(&p, &a1);
    let (mut c2, t2) = bridge(&p, &a2);
    let mut init = vec![0u8; 148];
    init[0] = 1;
    init[4..].fill(0x5A);
    let src = deliver(&c1, &mut c2, a2.key.public().0, &init).await;
    assert_eq!(src, a1.key.public().0);

    // Revoked: the relay closes, reconnecting is refused, the map is refused.
    revoke(&p, &a2.id);
    let ended = tokio::time::timeout(Duration::from_secs(30), t2).await;
    let err = ended
        .expect("the revoked relay client kept going")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, CoordError::Refused { status: 401, .. }),
        "{err}"
    );
    let ended = tokio::time::timeout(Duration::from_secs(40), w2.task).await;
    let err = ended
        .expect("the revoked coordination kept going")
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(err, CoordError::Refused { status: 401, .. }),
        "{err}"
    );
    // The data plane going away ends the others cleanly.
    drop(c1);
    assert!(tokio::time::timeout(Duration::from_secs(20), t1)
        .await
        .unwrap()
        .unwrap()
        .is_ok());
    drop(w1.map);
    assert!(tokio::time::timeout(Duration::from_secs(40), w1.task)
        .await
        .unwrap()
        .unwrap()
        .is_ok());
}
