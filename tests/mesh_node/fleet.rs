//! Two nodes of one organization and one of another, through a real control plane's relay:
//! the first two reach each other's services by name (1 MiB byte-exact through the terminal,
//! `citadel mesh ping`, `citadel terminal NODE`), the stranger sees none of them and cannot
//! dial them, a restarted node keeps its address, and every frame the plane forwarded was
//! WireGuard.

use std::io::{Read as _, Write as _};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use sha2::Digest as _;

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_one_organization_meet_on_the_mesh_and_no_one_else() {
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    let a = Node::enrolled(&plane, tmp.path(), "node-a", "acme");
    let b = Node::enrolled(&plane, tmp.path(), "node-b", "acme");
    let c = Node::enrolled(&plane, tmp.path(), "node-c", "beta");
    let alice = issue(&plane, "alice", "acme");
    let mut wa = a.work(&plane, &[]);
    let wb = b.work(&plane, &[]);
    let wc = c.work(&plane, &[]);
    let ip_a = mesh_ip(&wa, 0);
    mesh_ip(&wb, 0);
    mesh_ip(&wc, 0);
    assert!(ip_a.starts_with("100."), "{ip_a}");

    // Each sees its own organization only.
    eventually(
        Duration::from_secs(60),
        "a and b in each other's map",
        || a.peers() == ["node-b"] && b.peers() == ["node-a"],
    );
    assert!(c.peers().is_empty(), "the stranger sees {:?}", c.peers());

    // A round trip through the tunnel.
    let out = b.cli(&["mesh", "ping", "node-a", "-c", "2", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first: Value =
        serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert!(first["rtt_ms"].as_f64().unwrap() > 0.0, "{first}");

    // 1 MiB from A's terminal to B, byte-exact.
    let mut t = terminal_over_mesh(&b, &a, &alice).await;
    let text = t
        .run("head -c 786432 /dev/urandom > big && base64 -w0 big")
        .await;
    let digest = t.run("sha256sum big | cut -c1-64").await;
    let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    assert_eq!(clean.len(), 1 << 20, "1 MiB of base64 text");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(clean)
        .unwrap();
    assert_eq!(hex(&sha2::Sha256::digest(&bytes)), digest);
    drop(t);

    // A's status server answers on the mesh too, but never its mesh routes (no hop through A).
    let status_port: u16 = a.status_addr().rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(
        http_over_mesh(&b, "node-a", status_port, "/healthz").await,
        200
    );
    assert_eq!(
        http_over_mesh(&b, "node-a", status_port, "/mesh/status").await,
        404
    );

    // The stranger cannot reach A: not by name, not by address.
    let out = c.cli(&["mesh", "ping", &ip_a, "-c", "1", "--timeout", "2s"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no peer"), "{err}");
    assert_eq!(connect(&c, &ip_a, a.terminal_port).await.unwrap_err(), 404);
    assert_eq!(
        connect(&c, "node-a", a.terminal_port).await.unwrap_err(),
        404
    );

    // A restarted node keeps its address, and `citadel terminal NODE` reaches it by name.
    wa.kill9();
    let wa = a.work(&plane, &[]);
    assert_eq!(mesh_ip(&wa, 0), ip_a);
    eventually(Duration::from_secs(60), "b's terminal session on a", || {
        terminal_by_name(&b, &a, &alice).is_some_and(|out| out.contains("42"))
    });

    // Every frame the plane forwarded was WireGuard.
    let sample = |r: &str| format!("citadel_mesh_relay_frames_total{{result=\"{r}\"}}");
    assert!(metric(&plane, &sample("forwarded")) > 0);
    assert_eq!(metric(&plane, &sample("not_wireguard")), 0);
    assert!(!wa.logs().contains(&alice) && !wb.logs().contains(&alice));
}

/// `citadel terminal node-a:PORT` on B with a piped shell session: its stdout, or `None` when
/// it did not go over the mesh (B's tunnel to a restarted A may still be handshaking).
fn terminal_by_name(b: &Node, a: &Node, token: &str) -> Option<String> {
    let target = format!("{}:{}", a.name, a.terminal_port);
    let mut child = citadel(&b.data)
        .args(["terminal", &target, "--token", token])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"echo $((40+2))\nexit\n").unwrap();
    drop(stdin);
    let started = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    if !stderr.contains("over the mesh") {
        eprintln!("not over the mesh yet: {stderr}");
        return None;
    }
    Some(stdout)
}

/// The status code of `GET path` on `peer`'s `port`, over `via`'s mesh.
async fn http_over_mesh(via: &Node, peer: &str, port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = connect(via, peer, port)
        .await
        .unwrap_or_else(|s| panic!("/mesh/connect answered {s}"));
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ').nth(1).unwrap().parse().unwrap()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
