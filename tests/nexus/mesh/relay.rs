//! The relay on a real control plane, with real WireGuard handshakes (boringtun) between nodes.

use std::time::Duration;

use boringtun::noise::{Tunn, TunnResult};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::Message;
use x25519_dalek::PublicKey;

use super::{acme_pair, metric, metric_reaching, revoke, Node};
use crate::support::plane::Plane;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a relay socket with `token`, once the plane's session serves it; the refusal's status
/// when there is one.
async fn open(p: &Plane, token: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://127.0.0.1:{}/api/fabric/mesh/relay", p.port)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((mut ws, _)) => {
            // The pong comes from the plane's relay session, so it is attached: frames to this
            // node are forwarded from now on.
            ws.send(Message::Ping("attached?".into())).await.unwrap();
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(20), ws.next()).await;
                match msg.expect("no pong within 20 s") {
                    Some(Ok(Message::Pong(_))) => return Ok(ws),
                    Some(Ok(_)) => {}
                    other => panic!("the relay closed: {other:?}"),
                }
            }
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The next binary frame on `ws` (bounded wait).
async fn next_frame(ws: &mut Ws) -> Vec<u8> {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("no frame within 20 s")
            .expect("the relay closed")
            .unwrap();
        if let Message::Binary(b) = msg {
            return b.to_vec();
        }
    }
}

async fn send(ws: &mut Ws, to: &Node, datagram: &[u8]) {
    let mut f = to.key.public().0.to_vec();
    f.extend_from_slice(datagram);
    ws.send(Message::Binary(f.into())).await.unwrap();
}

/// Sends `datagram` from `me` to itself and waits for it: the frames `ws` sent before were
/// handled by then (one socket's frames are routed in order).
async fn handled(ws: &mut Ws, me: &Node, datagram: &[u8]) {
    send(ws, me, datagram).await;
    assert_eq!(&next_frame(ws).await[32..], datagram);
}

fn tunnel(me: &Node, peer: &Node, index: u32) -> Tunn {
    let peer = PublicKey::from(peer.key.public().0);
    Tunn::new(me.key.secret().clone(), peer, None, None, index, None)
}

/// An IPv4 packet from 100.64.0.1 to 100.64.0.2 carrying `payload`.
fn ipv4(payload: &[u8]) -> Vec<u8> {
    let len = (20 + payload.len()) as u16;
    let mut p = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&[100, 64, 0, 1, 100, 64, 0, 2]);
    p.extend_from_slice(payload);
    p
}

fn written(r: TunnResult<'_>) -> Vec<u8> {
    match r {
        TunnResult::WriteToNetwork(b) => b.to_vec(),
        TunnResult::Err(e) => panic!("{e:?}"),
        _ => panic!("nothing to send"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_forwards_wireguard_within_an_org_and_drops_the_rest() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let a1 = Node::enrol(&p, "a1", "acme");
    let a2 = Node::enrol(&p, "a2", "acme");
    let b1 = Node::enrol(&p, "b1", "beta");
    let b2 = Node::enrol(&p, "b2", "beta");
    // Refused before registering, for the admin token and for no one.
    assert_eq!(open(&p, Some(&a1.token)).await.err(), Some(409));
    assert_eq!(open(&p, Some(&p.token)).await.err(), Some(403));
    assert_eq!(open(&p, None).await.err(), Some(401));
    for n in [&a1, &a2, &b1, &b2] {
        n.register(&p);
    }
    let mut w1 = open(&p, Some(&a1.token)).await.unwrap();
    let mut w2 = open(&p, Some(&a2.token)).await.unwrap();
    let mut wb1 = open(&p, Some(&b1.token)).await.unwrap();
    let mut wb2 = open(&p, Some(&b2.token)).await.unwrap();

    // A real handshake through the relay: byte-exact, with the sender's key in front.
    let (mut t1, mut t2) = (tunnel(&a1, &a2, 1), tunnel(&a2, &a1, 2));
    let mut buf = vec![0u8; 2048];
    let init = written(t1.format_handshake_initiation(&mut buf, false));
    assert_eq!(init.len(), 148);
    send(&mut w1, &a2, &init).await;
    let got = next_frame(&mut w2).await;
    assert_eq!(&got[..32], &a1.key.public().0);
    assert_eq!(&got[32..], &init[..]);
    let response = written(t2.decapsulate(None, &got[32..], &mut buf));
    send(&mut w2, &a1, &response).await;
    let got = next_frame(&mut w1).await;
    assert_eq!(
        (&got[..32], &got[32..]),
        (&a2.key.public().0[..], &response[..])
    );
    let keepalive = written(t1.decapsulate(None, &got[32..], &mut buf));

    // Dropped: to another organization, and a plaintext frame; then a data packet still flows.
    let before = |s: &str| {
        metric(
            &p,
            &format!("citadel_mesh_relay_frames_total{{result=\"{s}\"}}"),
        )
    };
    let (foreign, plain, fwd) = (
        before("foreign"),
        before("not_wireguard"),
        before("forwarded"),
    );
    send(&mut w1, &b1, &keepalive).await;
    send(&mut w1, &a2, b"GET / HTTP/1.1\r\nHost: a2\r\n\r\n").await;
    send(&mut w1, &a2, &keepalive).await;
    let packet = written(t1.encapsulate(&ipv4(b"over the mesh"), &mut buf));
    send(&mut w1, &a2, &packet).await;
    assert_eq!(
        &next_frame(&mut w2).await[32..],
        &keepalive[..],
        "the plaintext frame came through"
    );
    let data = next_frame(&mut w2).await;
    let _ = t2.decapsulate(None, &keepalive, &mut vec![0u8; 2048]);
    match t2.decapsulate(None, &data[32..], &mut buf) {
        TunnResult::WriteToTunnelV4(p, src) => {
            assert_eq!(&p[20..], b"over the mesh");
            assert_eq!(src.to_string(), "100.64.0.1");
        }
        _ => panic!("the data packet did not decrypt"),
    }
    // b1's first frame is b2's, sent after a1's frame to b1 was dropped.
    let mut tb = tunnel(&b2, &b1, 3);
    let b_init = written(tb.format_handshake_initiation(&mut buf, false));
    send(&mut wb2, &b1, &b_init).await;
    let got = next_frame(&mut wb1).await;
    assert_eq!(
        &got[..32],
        &b2.key.public().0,
        "a frame from another organization arrived"
    );
    assert_eq!(before("foreign"), foreign + 1);
    assert_eq!(before("not_wireguard"), plain + 1);
    let forwarded = "citadel_mesh_relay_frames_total{result=\"forwarded\"}";
    assert_eq!(metric_reaching(&p, forwarded, fwd + 3), fwd + 3);
    let by_type = |t: &str| {
        metric(
            &p,
            &format!("citadel_mesh_relay_forwarded_total{{type=\"{t}\"}}"),
        )
    };
    assert!(by_type("handshake_initiation") >= 2 && by_type("handshake_response") >= 1);
    assert!(by_type("transport") >= 2);

    // A revoked node's socket is closed at once, and it cannot open another.
    revoke(&p, &a2.id);
    assert_eq!(closed(&mut w2).await, Some(1008));
    assert_eq!(open(&p, Some(&a2.token)).await.err(), Some(401));
    // Frames to it are now offline.
    let offline = before("offline");
    send(&mut w1, &a2, &keepalive).await;
    handled(&mut w1, &a1, &keepalive).await;
    assert_eq!(before("offline"), offline + 1);
}

/// Waits for `ws` to be closed by the plane: the close code, if one came.
async fn closed(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(f))) => return f.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the relay socket stayed open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_approved_into_another_organization_loses_its_old_relay() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let (a1, a2) = acme_pair(&p);
    let mut w1 = open(&p, Some(&a1.token)).await.unwrap();
    let mut w2 = open(&p, Some(&a2.token)).await.unwrap();
    let mut t = tunnel(&a1, &a2, 1);
    let mut buf = vec![0u8; 2048];
    let init = written(t.format_handshake_initiation(&mut buf, false));
    send(&mut w1, &a2, &init).await;
    assert_eq!(&next_frame(&mut w2).await[32..], &init[..]);
    // Approved again into beta: the socket opened as a node of acme is closed.
    let moved = Node::enrol(&p, "a2", "beta");
    assert_eq!(moved.id, a2.id);
    assert_eq!(closed(&mut w2).await, Some(1008));
    assert_eq!(open(&p, Some(&a2.token)).await.err(), Some(401));
    // Reconnected as a node of beta with a new key: acme's frames to its old key go nowhere.
    moved.register(&p);
    let mut wm = open(&p, Some(&moved.token)).await.unwrap();
    let offline = metric(&p, "citadel_mesh_relay_frames_total{result=\"offline\"}");
    send(&mut w1, &a2, &init).await;
    handled(&mut w1, &a1, &init).await;
    assert_eq!(
        metric(&p, "citadel_mesh_relay_frames_total{result=\"offline\"}"),
        offline + 1
    );
    let foreign = metric(&p, "citadel_mesh_relay_frames_total{result=\"foreign\"}");
    send(&mut w1, &moved, &init).await;
    handled(&mut w1, &a1, &init).await;
    let now = metric(&p, "citadel_mesh_relay_frames_total{result=\"foreign\"}");
    assert_eq!(
        now,
        foreign + 1,
        "a frame to beta's key was not dropped as foreign"
    );
    drop(wm.close(None).await);
}
