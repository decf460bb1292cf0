//! The mesh inside real nodes: a real control plane (`citadel nexus serve`) and real `citadel
//! work` processes, each enrolled by device authorization into an organization with its own
//! credential and data directory; what a node sees and does is read through the real CLI
//! (`citadel mesh`, `citadel terminal`) and its loopback status server.

mod fleet;
mod refused;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::support::plane::{citadel, eventually, free_port, raw, Plane};
use crate::support::worker::Worker;
use crate::terminal::Client;

/// Enrols a node named `host` into `org` by device authorization: its credential.
pub fn enrol(p: &Plane, host: &str, org: &str) -> String {
    let post = |path: &str, body: Value| {
        let r = raw(p.port, "POST", path, &[], Some(&body.to_string()));
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        r.json()
    };
    let start = post(
        "/api/fabric/device-auth/start",
        json!({"client_id": "citadel", "hostname": host, "machine_id": format!("{host}-id")}),
    );
    let approve = json!({"user_code": start["user_code"], "org": org});
    p.json("POST", "/api/v1/device-auth/approve", Some(approve));
    let creds = post(
        "/api/fabric/device-auth/token",
        json!({"device_code": start["device_code"],
               "grant_type": "urn:ietf:params:oauth:grant-type:device_code"}),
    );
    creds["access_token"].as_str().unwrap().to_string()
}

/// A terminal token for `user` of `org`.
pub fn issue(p: &Plane, user: &str, org: &str) -> String {
    let body = json!({"user_id": user, "org_id": org});
    let made = p.json("POST", "/api/v1/terminal/tokens", Some(body));
    made["token"].as_str().unwrap().to_string()
}

/// An enrolled node's data directory and the port of its terminal.
pub struct Node {
    pub name: String,
    pub data: PathBuf,
    pub terminal_port: u16,
    /// The credential its jobs are taken with.
    pub jobs_token: String,
}

impl Node {
    /// A data directory enrolled with `p` as `name` in `org` (identity.json, node-token), with
    /// the console on (bare shells) on a free port.
    pub fn enrolled(p: &Plane, root: &Path, name: &str, org: &str) -> Self {
        let credential = enrol(p, name, org);
        Self::with_credential(p, root, name, org, &credential, &credential)
    }

    /// A data directory whose node-token is `credential` (jobs taken with `jobs_token`).
    pub fn with_credential(
        p: &Plane,
        root: &Path,
        name: &str,
        org: &str,
        credential: &str,
        jobs_token: &str,
    ) -> Self {
        let data = root.join(name);
        std::fs::create_dir_all(&data).unwrap();
        let identity = json!({"node_id": name, "org_id": org, "control_plane": p.url()});
        std::fs::write(data.join("identity.json"), identity.to_string()).unwrap();
        std::fs::write(data.join("node-token"), format!("{credential}\n")).unwrap();
        let manifest = "permissions:\n  console:\n    enabled: true\n    tmux: off\n    \
                        rate_per_second: 100\n    rate_burst: 100\n";
        std::fs::write(data.join("citadel.yaml"), manifest).unwrap();
        Self {
            name: name.to_string(),
            data,
            terminal_port: free_port(),
            jobs_token: jobs_token.to_string(),
        }
    }

    /// `citadel work` on this node, taking jobs from `p`.
    pub fn work(&self, p: &Plane, extra: &[&str]) -> Worker {
        let transport = p.work_flags(&self.jobs_token);
        let listen = format!("127.0.0.1:{}", self.terminal_port);
        let mut args = vec!["--node-name", &self.name, "--terminal-listen", &listen];
        args.extend(extra);
        Worker::start_on(&transport.each_ref().map(String::as_str), &self.data, &args)
    }

    /// `citadel ARGS` on this node's data directory.
    pub fn cli(&self, args: &[&str]) -> Output {
        citadel(&self.data).args(args).output().unwrap()
    }

    /// `citadel mesh status --json`.
    pub fn mesh_status(&self) -> Value {
        let out = self.cli(&["mesh", "status", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The names of the peers `citadel mesh status` lists.
    pub fn peers(&self) -> Vec<String> {
        let v = self.mesh_status();
        let peers = v["peers"].as_array().cloned().unwrap_or_default();
        let mut names: Vec<String> = peers
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect();
        names.sort();
        names
    }

    /// The loopback address of the worker's status server.
    pub fn status_addr(&self) -> String {
        let file = self.data.join("status.addr");
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }
}

/// The mesh address a worker announced (`citadel: mesh 100.64.x.y (N peers)`), once it did.
pub fn mesh_ip(worker: &Worker, nth: usize) -> String {
    let mut ip = None;
    eventually(Duration::from_secs(60), "the mesh up", || {
        let logs = worker.logs();
        ip = logs
            .lines()
            .filter_map(|l| l.strip_prefix("citadel: mesh "))
            .nth(nth)
            .and_then(|rest| rest.split(' ').next())
            .map(str::to_string);
        ip.is_some()
    });
    ip.unwrap()
}

/// A byte stream to `peer`'s `port` over `via`'s mesh (`GET /mesh/connect`, upgraded): the
/// status code when it is refused.
pub async fn connect(via: &Node, peer: &str, port: u16) -> Result<tokio::net::TcpStream, u16> {
    let mut s = tokio::net::TcpStream::connect(via.status_addr())
        .await
        .unwrap();
    let req = format!(
        "GET /mesh/connect?peer={peer}&port={port} HTTP/1.1\r\nHost: x\r\n\
         Connection: Upgrade\r\nUpgrade: citadel-mesh-tcp\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(s.read_u8().await.unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    match status {
        101 => Ok(s),
        other => Err(other),
    }
}

/// A terminal client of `peer`'s terminal, over `via`'s mesh.
pub async fn terminal_over_mesh(via: &Node, peer: &Node, token: &str) -> Client {
    let stream = connect(via, &peer.name, peer.terminal_port)
        .await
        .unwrap_or_else(|s| panic!("/mesh/connect answered {s}"));
    let url = format!("ws://{}/terminal?token={token}", peer.name);
    let plain = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async(url, plain).await.unwrap();
    Client {
        ws,
        output: Vec::new(),
    }
}

/// The value of one sample of the control plane's `/metrics`.
pub fn metric(p: &Plane, sample: &str) -> u64 {
    let r = p.call("GET", "/metrics", None);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics"))
}
