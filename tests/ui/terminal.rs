//! The console's node terminal against a real control plane and real `citadel work` nodes on the
//! real mesh: the WebSocket's gates (no session, foreign Origin, read-only session), a shell
//! through plane → mesh → node for an admin session, clear errors for a node whose terminal is
//! off and one whose mesh is off, the minted token revoked at the close, and the relay's count:
//! frames forwarded, none foreign.

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{console_token, get, login};
use crate::mesh_node::{mesh_ip, metric, Node};
use crate::support::plane::{eventually, Plane};
use crate::terminal::Client;

/// The console terminal of `node` with the given cookie and Origin: the client, or the HTTP
/// status of the refusal.
pub async fn open(
    p: &Plane,
    node: &str,
    cookie: Option<&str>,
    origin: Option<&str>,
) -> Result<Client, u16> {
    let url = format!(
        "ws://127.0.0.1:{}/ui/nodes/{node}/terminal/ws?cols=100&rows=30",
        p.port
    );
    let mut req = url.into_client_request().unwrap();
    let h = req.headers_mut();
    if let Some(c) = cookie {
        h.insert("cookie", format!("citadel_console={c}").parse().unwrap());
    }
    if let Some(o) = origin {
        h.insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Client {
            ws,
            output: Vec::new(),
        }),
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// The error frame and the close of a bridge that could not open (bounded).
async fn error_and_close(c: &mut Client) -> (String, Option<u16>) {
    let mut error = String::new();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), c.ws.next())
            .await
            .expect("the bridge neither answered nor closed within 30 s");
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "error" {
                    error = v["error"].as_str().unwrap().to_string();
                }
            }
            Some(Ok(Message::Close(f))) => return (error, f.map(|f| u16::from(f.code))),
            None | Some(Err(_)) => return (error, None),
            Some(Ok(_)) => {}
        }
    }
}

/// The id of the node's heartbeat record once it carries a report (the device approval made
/// another record of the same name, without one).
fn node_id(p: &Plane, name: &str) -> String {
    let mut found = None;
    eventually(Duration::from_secs(60), "the node's report", || {
        let v = p.json("GET", "/api/v1/nodes", None);
        let ids = v
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["name"] == name);
        found = ids
            .filter_map(|n| n["id"].as_str())
            .map(|id| p.json("GET", &format!("/api/v1/nodes/{id}"), None))
            .find(|n| n["report"].is_object());
        found.is_some()
    });
    let node = found.unwrap();
    assert!(node["report"].get("terminal").is_some(), "{name}: {node}");
    node["id"].as_str().unwrap().to_string()
}

/// The states of the terminal tokens the console minted.
fn console_tokens(p: &Plane) -> Vec<String> {
    let v = p.json("GET", "/api/v1/terminal/tokens", None);
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["user_id"] == "console-admin")
        .map(|t| t["state"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_reaches_a_nodes_shell_through_the_plane_over_the_mesh() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    let a = Node::enrolled(&plane, tmp.path(), "node-a", "acme");
    let off = Node::enrolled(&plane, tmp.path(), "node-off", "acme");
    let solo = Node::enrolled(&plane, tmp.path(), "node-solo", "beta");
    let wa = a.work(&plane, &[]);
    // node-off's terminal is off (its manifest's console permission).
    std::fs::write(
        off.data.join("citadel.yaml"),
        "permissions:\n  console:\n    enabled: false\n",
    )
    .unwrap();
    let woff = off.work(&plane, &[]);
    let _wsolo = solo.work(&plane, &["--no-mesh"]);
    mesh_ip(&wa, 0);
    mesh_ip(&woff, 0);
    let (id_a, id_off, id_solo) = (
        node_id(&plane, "node-a"),
        node_id(&plane, "node-off"),
        node_id(&plane, "node-solo"),
    );
    // The WebSocket client names the port in its Host: the console's own origin does too.
    let own = format!("http://127.0.0.1:{}", plane.port);
    let own = Some(own.as_str());
    let admin = login(&plane, &plane.token);
    let viewer = login(&plane, &console_token(&plane));

    // The gates, before any bridge: no session, another origin, a read-only session.
    let foreign = Some("http://evil.example");
    assert_ne!(open(&plane, &id_a, None, own).await.err(), None);
    assert_eq!(
        open(&plane, &id_a, Some(&admin), foreign).await.err(),
        Some(403)
    );
    assert_eq!(
        open(&plane, &id_a, Some(&admin), None).await.err(),
        Some(403)
    );
    assert_eq!(
        open(&plane, &id_a, Some(&viewer), own).await.err(),
        Some(403)
    );
    let page = get(&plane, &format!("/ui/nodes/{id_a}/terminal"), &viewer);
    assert_eq!(page.status, 403);
    let node_page = get(&plane, &format!("/ui/nodes/{id_a}"), &viewer);
    assert!(
        !node_page.body.contains("open-terminal"),
        "{}",
        node_page.body
    );
    let node_page = get(&plane, &format!("/ui/nodes/{id_a}"), &admin);
    assert!(node_page
        .body
        .contains(&format!("/ui/nodes/{id_a}/terminal")));

    // An admin's shell on node-a: plane → mesh → node.
    let mut t = match open(&plane, &id_a, Some(&admin), own).await {
        Ok(t) => t,
        Err(s) => panic!("the admin's terminal was refused: {s}"),
    };
    assert_eq!(t.run("echo $((6*7))").await, "42");
    assert_eq!(console_tokens(&plane), ["active"]);
    // One bridge per session and node.
    let mut second = open(&plane, &id_a, Some(&admin), own).await.unwrap();
    let (why, _) = error_and_close(&mut second).await;
    assert!(why.contains("already has a terminal open"), "{why}");
    t.ws.close(None).await.unwrap();
    drop(t);
    eventually(
        Duration::from_secs(10),
        "the console's token revoked",
        || console_tokens(&plane) == ["revoked"],
    );

    // A node whose terminal is off, and one off the mesh: a clear error and a close.
    let mut t = open(&plane, &id_off, Some(&admin), own).await.unwrap();
    let (why, code) = error_and_close(&mut t).await;
    assert!(why.contains("terminal is disabled"), "{why}");
    assert_eq!(code, Some(1011));
    let mut t = open(&plane, &id_solo, Some(&admin), own).await.unwrap();
    let (why, _) = error_and_close(&mut t).await;
    assert!(why.contains("not on its organization's mesh"), "{why}");

    assert!(
        metric(
            &plane,
            "citadel_mesh_relay_frames_total{result=\"forwarded\"}"
        ) > 0
    );
    assert_eq!(
        metric(
            &plane,
            "citadel_mesh_relay_frames_total{result=\"foreign\"}"
        ),
        0
    );
}
