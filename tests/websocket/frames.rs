//! The frames on the wire, from a raw WebSocket client: the token is required, bad frames get an
//! error frame (and the connection stays up), requests are answered by id.

use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::support::plane::*;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(p: &Plane, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
    let mut req = format!("ws://127.0.0.1:{}/api/v1/ws", p.port)
        .into_client_request()
        .unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(req)
        .await
        .map(|(ws, _)| ws)
}

/// Sends `frame` and reads the next text frame.
async fn ask(ws: &mut Ws, frame: Message) -> Value {
    ws.send(frame).await.unwrap();
    recv(ws).await
}

async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no answer within 10 s")
            .expect("the connection closed")
            .unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

fn text(v: Value) -> Message {
    Message::text(v.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_frames_get_error_frames_and_requests_are_answered_by_id() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    match open(&p, None).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("a socket without the token: {:?}", other.map(|_| ())),
    }
    match open(&p, Some("wrong")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("a wrong token: {:?}", other.map(|_| ())),
    }
    let mut ws = open(&p, Some(&p.token)).await.unwrap();

    let e = ask(&mut ws, Message::text("not json")).await;
    assert_eq!(
        (e["type"].as_str(), e["status"].as_u64()),
        (Some("error"), Some(400))
    );
    assert!(e.get("id").is_none());
    assert!(
        e["error"].as_str().unwrap().contains("unreadable frame"),
        "{e}"
    );

    let e = ask(&mut ws, text(json!({"type": "ping", "id": 1}))).await;
    assert_eq!(
        (e["type"].as_str(), e["id"].as_u64()),
        (Some("error"), Some(1))
    );
    assert!(
        e["error"].as_str().unwrap().contains("say hello first"),
        "{e}"
    );

    let e = ask(&mut ws, Message::binary(vec![1u8, 2, 3])).await;
    assert!(e["error"].as_str().unwrap().contains("binary"), "{e}");

    let w = ask(
        &mut ws,
        text(json!({"type": "hello", "worker": "raw", "lease_ms": 5000})),
    )
    .await;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["lease_ms"], 5000);
    let e = ask(&mut ws, text(json!({"type": "hello", "worker": "raw"}))).await;
    assert!(e["error"].as_str().unwrap().contains("already"), "{e}");

    let e = ask(&mut ws, text(json!({"type": "frobnicate", "id": 5}))).await;
    assert_eq!(
        (e["id"].as_u64(), e["status"].as_u64()),
        (Some(5), Some(400))
    );
    let e = ask(&mut ws, text(json!({"type": "credit", "credit": -1}))).await;
    assert_eq!(e["status"], 400);

    let e = ask(
        &mut ws,
        text(json!({"type": "settle", "id": 6, "job": "nope", "lease_id": "L", "action": "ack"})),
    )
    .await;
    assert_eq!(
        (e["id"].as_u64(), e["status"].as_u64()),
        (Some(6), Some(404))
    );

    // A job is pushed once credit is granted, with its lease.
    p.submit(json!({"id": "f0", "type": "echo", "payload": {"a": 1}}));
    let e = ask(
        &mut ws,
        text(json!({"type": "renew", "id": 7, "job": "f0", "lease_id": "L"})),
    )
    .await;
    assert_eq!(
        (e["id"].as_u64(), e["status"].as_u64()),
        (Some(7), Some(409))
    );
    let pushed = ask(&mut ws, text(json!({"type": "credit", "credit": 1}))).await;
    assert_eq!(pushed["type"], "job");
    assert_eq!(pushed["job"]["id"], "f0");
    assert_eq!(pushed["job"]["attempts"], 1);
    let lease = pushed["job"]["lease"]["id"].as_str().unwrap().to_string();
    assert_eq!(pushed["job"]["lease"]["worker"], "raw");
    // A new socket of the same worker gets its leased jobs again, without credit.
    let mut second = open(&p, Some(&p.token)).await.unwrap();
    let w = ask(&mut second, text(json!({"type": "hello", "worker": "raw"}))).await;
    assert_eq!(w["type"], "welcome");
    let again = recv(&mut second).await;
    assert_eq!(
        (again["type"].as_str(), again["again"].as_bool()),
        (Some("job"), Some(true))
    );
    assert_eq!(
        again["job"]["lease"]["id"].as_str(),
        pushed["job"]["lease"]["id"].as_str()
    );
    drop(second);

    let e = ask(
        &mut ws,
        text(
            json!({"type": "settle", "id": 8, "job": "f0", "lease_id": lease, "action": "explode"}),
        ),
    )
    .await;
    assert_eq!(
        (e["id"].as_u64(), e["status"].as_u64()),
        (Some(8), Some(400))
    );
    let e = ask(
        &mut ws,
        text(json!({"type": "event", "id": 9, "job": "f0", "event": {"type": "end", "jobId": "other"}})),
    )
    .await;
    assert_eq!(
        (e["id"].as_u64(), e["status"].as_u64()),
        (Some(9), Some(400))
    );
    let ok = ask(
        &mut ws,
        text(json!({"type": "renew", "id": 10, "job": "f0", "lease_id": lease, "lease_ms": 5000})),
    )
    .await;
    assert_eq!(
        (ok["type"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(10))
    );
    assert_eq!(ok["cancel_requested"], false);
    assert!(ok["lease_expires_ms"].as_u64().is_some());
    let ok = ask(
        &mut ws,
        text(json!({"type": "settle", "id": 11, "job": "f0", "lease_id": lease, "action": "ack"})),
    )
    .await;
    assert_eq!(
        (ok["type"].as_str(), ok["id"].as_u64()),
        (Some("ok"), Some(11))
    );
    assert_eq!(p.json("GET", "/api/v1/jobs/f0", None)["state"], "succeeded");
    let ok = ask(&mut ws, text(json!({"type": "ping", "id": 12}))).await;
    assert_eq!(ok, json!({"type": "ok", "id": 12}));
}
