//! Two or three `Mesh` nodes whose relay channels are bridged by an in-memory relay that checks
//! every datagram is a WireGuard message: streams, dial by name, ping, isolation, status.

use std::sync::atomic::Ordering;
use std::time::Duration;

use citadel_mesh::bench::{echo, pair, MemoryRelay, TestNode};
use citadel_mesh::{Mesh, MeshError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

/// A bound on every wait, far above what any step takes.
const BOUND: Duration = Duration::from_secs(60);

async fn bounded<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(BOUND, f).await.expect("bounded wait")
}

fn serve_echo(mesh: &Mesh, port: u16) {
    let listener = mesh.listen(port).expect("listen");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(echo(s));
        }
    });
}

fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Writes `data` and reads the echo back.
async fn round(s: citadel_mesh::MeshStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = tokio::io::split(s);
    let len = data.len();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.expect("write");
        w
    });
    let mut back = vec![0u8; len];
    r.read_exact(&mut back).await.expect("read the echo");
    drop(writer.await.expect("writer"));
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mebibyte_echoes_byte_exact_through_the_relay() {
    let relay = MemoryRelay::default();
    let (a, b, _maps) = pair(&relay);
    serve_echo(&a, 7);
    let s = bounded(b.dial(&a.mesh_ip().to_string(), 7))
        .await
        .expect("dial by IP");
    assert_eq!(s.peer_addr().map(|p| *p.ip()), Some(a.mesh_ip()));
    let data = pattern(1 << 20);
    let back = bounded(round(s, data.clone())).await;
    assert!(back == data, "the echo differs from what was sent");
    eprintln!(
        "datagrams dropped at a full relay channel: {} and {}",
        a.status().relay_dropped,
        b.status().relay_dropped
    );
    assert_eq!(
        relay.counts.malformed.load(Ordering::Relaxed),
        0,
        "only WireGuard datagrams cross the relay"
    );
    assert!(
        relay.counts.forwarded.load(Ordering::Relaxed) > 700,
        "1 MiB each way takes many datagrams"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_by_name_ping_and_status_counts() {
    let relay = MemoryRelay::default();
    let (a, b, _maps) = pair(&relay);
    serve_echo(&a, 8080);
    let s = bounded(b.dial("alpha", 8080)).await.expect("dial by name");
    let data = pattern(100_000);
    assert!(bounded(round(s, data.clone())).await == data);

    let rtt = bounded(b.ping("alpha", BOUND))
        .await
        .expect("ping over the tunnel");
    assert!(rtt < BOUND);
    bounded(a.ping("beta", BOUND))
        .await
        .expect("ping the other way");

    let status = b.status();
    assert_eq!(status.mesh_ip, b.mesh_ip());
    assert_eq!(status.peers.len(), 1);
    let alpha = &status.peers[0];
    assert_eq!(
        (alpha.name.as_str(), alpha.path, alpha.mesh_ip),
        ("alpha", "relay", a.mesh_ip())
    );
    assert!(
        alpha.tx_bytes > 100_000 && alpha.rx_bytes > 100_000,
        "{alpha:?}"
    );
    assert!(alpha.last_handshake_ago.is_some());

    let err = b.dial("gamma", 8080).await.expect_err("no such peer");
    assert!(matches!(err, MeshError::UnknownPeer(_)) && !err.retryable());
    let err = bounded(b.dial("alpha", 9))
        .await
        .expect_err("nothing listens on 9");
    assert!(matches!(err, MeshError::Refused { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_map_cannot_dial() {
    let relay = MemoryRelay::default();
    let (a, b, c) = (
        TestNode::new("alpha", 1),
        TestNode::new("beta", 2),
        TestNode::new("gamma", 3),
    );
    let (_ta, ra) = watch::channel(a.map(1, &[&b]));
    let (_tc, rc) = watch::channel(c.map(1, &[&a]));
    let mesh_a = relay.attach(&a, ra);
    let mut mesh_c = relay.attach(&c, rc);
    serve_echo(&mesh_a, 7);
    mesh_c.set_dial_timeout(Duration::from_secs(3));
    let err = bounded(mesh_c.dial("alpha", 7))
        .await
        .expect_err("alpha does not know gamma");
    assert!(
        matches!(err, MeshError::Timeout { .. }) && err.retryable(),
        "{err}"
    );
    assert!(err
        .to_string()
        .contains("may not have this node in its map"));
    assert!(mesh_a.status().peers.iter().all(|p| p.name != "gamma"));
    assert_eq!(
        mesh_a.status().peers[0].rx_bytes,
        0,
        "nothing from gamma reached a tunnel"
    );
    assert!(
        relay.counts.forwarded.load(Ordering::Relaxed) > 0,
        "gamma's handshakes did cross the relay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_removed_from_the_map_can_no_longer_connect_until_added_again() {
    let relay = MemoryRelay::default();
    let (a, mut b, maps) = pair(&relay);
    serve_echo(&a, 7);
    let s = bounded(b.dial("alpha", 7))
        .await
        .expect("dial while in the map");
    assert!(bounded(round(s, pattern(1000))).await == pattern(1000));
    let held = a.listen(9).expect("listen");
    let _open = bounded(b.dial("alpha", 9))
        .await
        .expect("dial while in the map");
    let (mut held, _) = bounded(held.accept()).await.expect("accept");

    let with_b = maps[0].borrow().clone();
    let mut without_b = with_b.clone();
    without_b.version += 1;
    without_b.peers.clear();
    maps[0].send(without_b).expect("map receiver alive");
    bounded(async {
        while !a.status().peers.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let mut buf = [0u8; 8];
    let end = bounded(held.read(&mut buf)).await;
    assert!(
        matches!(end, Ok(0) | Err(_)),
        "alpha's connection from beta ends: {end:?}"
    );
    b.set_dial_timeout(Duration::from_secs(3));
    let err = bounded(b.dial("alpha", 7))
        .await
        .expect_err("alpha dropped beta");
    assert!(err.retryable(), "{err}");

    // Added again, alpha has a fresh tunnel while beta still holds the old session: the first
    // datagram on that session makes alpha start a handshake, well before WireGuard's own
    // 15 s timeout would make beta start one.
    let mut again = with_b;
    again.version += 2;
    maps[0].send(again).expect("map receiver alive");
    // A SYN that reaches alpha before its map does is dropped, and TCP backs off (1 s, 2 s, …).
    b.set_dial_timeout(citadel_mesh::DIAL_TIMEOUT);
    let s = bounded(b.dial("alpha", 7))
        .await
        .expect("dial once added again");
    assert!(bounded(round(s, pattern(1000))).await == pattern(1000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_streams_and_listeners() {
    let relay = MemoryRelay::default();
    let (a, b, _maps) = pair(&relay);
    let listener = a.listen(7).expect("listen");
    let mut s = bounded(b.dial("alpha", 7)).await.expect("dial");
    let (_accepted, from) = bounded(listener.accept()).await.expect("accept");
    assert_eq!(*from.ip(), b.mesh_ip());
    b.shutdown().await;
    let mut buf = [0u8; 8];
    assert_eq!(
        bounded(s.read(&mut buf))
            .await
            .expect("read after shutdown"),
        0
    );
    a.shutdown().await;
    assert!(matches!(
        bounded(listener.accept()).await,
        Err(MeshError::Shutdown)
    ));
}
