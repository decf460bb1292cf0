//! `citadel mesh status` (this node's mesh address, its peers, the path, bytes and last
//! handshake of each) and `citadel mesh ping NODE` (round trips through the tunnel), asked of the
//! running worker through its loopback status server (DATA_DIR/status.addr); and
//! [`open_stream`], the byte stream to a peer's port over that worker's mesh that `citadel
//! terminal NODE` runs its WebSocket over. Output only: these commands never change the worker,
//! and never see a key beyond the public ones.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Subcommand};
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::remote::encode;
use crate::format;
use crate::status::mesh::UPGRADE;

#[derive(Debug, Args)]
pub struct MeshArgs {
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Ask this status server instead of the one in DATA_DIR/status.addr.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    addr: Option<String>,
    #[command(subcommand)]
    command: MeshCommand,
}

#[derive(Debug, Subcommand)]
pub enum MeshCommand {
    /// This node's mesh address and its peers: path, bytes sent and received, last handshake.
    Status,
    /// Round trips to a peer through the tunnel.
    Ping {
        /// The peer's name (as `citadel mesh status` lists it) or mesh address.
        node: String,
        /// How many round trips.
        #[arg(long, short = 'c', default_value_t = 3, value_name = "N")]
        count: u32,
        /// How long each waits for its answer.
        #[arg(long, default_value = "5s", value_name = "DURATION")]
        timeout: String,
    },
}

pub async fn run(args: MeshArgs, data_dir: &Path) -> anyhow::Result<()> {
    let addr = super::status::worker_addr(args.addr, data_dir)?;
    match args.command {
        MeshCommand::Status => {
            let v = ask(&addr, "/mesh/status", data_dir).await?;
            match args.json {
                true => println!("{}", serde_json::to_string_pretty(&v)?),
                false => print_status(&v),
            }
        }
        MeshCommand::Ping {
            node,
            count,
            timeout,
        } => {
            let timeout = format::parse_duration(&timeout).context("--timeout")?;
            let path = format!(
                "/mesh/ping?peer={}&timeout_ms={}",
                encode(&node),
                timeout.as_millis()
            );
            for _ in 0..count.max(1) {
                let v = ask(&addr, &path, data_dir).await?;
                match args.json {
                    true => println!("{v}"),
                    false => println!(
                        "{node}: {:.2} ms over the mesh",
                        v["rtt_ms"].as_f64().unwrap_or(0.0)
                    ),
                }
            }
        }
    }
    Ok(())
}

/// A mesh route of the worker's status server, as JSON; its refusal as the error.
async fn ask(addr: &str, path: &str, data_dir: &Path) -> anyhow::Result<Value> {
    let http =
        crate::handlers::http_client(Duration::from_secs(2)).context("building the HTTP client")?;
    let url = format!("http://{addr}{path}");
    let resp = match http.get(&url).timeout(Duration::from_secs(60)).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => bail!("{}", not_running(addr, data_dir)),
        Err(e) => return Err(e).with_context(|| format!("asking {url}")),
    };
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        bail!("{}", refusal(status.as_u16(), &body));
    }
    Ok(body)
}

fn not_running(addr: &str, data_dir: &Path) -> String {
    format!(
        "no citadel worker is running on {}: its status server {addr} does not answer \
         (start one with `citadel work`)",
        data_dir.display()
    )
}

/// The worker's error message, or the bare status.
fn refusal(status: u16, body: &Value) -> String {
    match body["error"].as_str() {
        Some(e) => e.to_string(),
        None => format!("the worker answered {status}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn print_status(v: &Value) {
    if v["state"] != "up" {
        println!("mesh       {}: {}", text(&v["state"]), text(&v["error"]));
        return;
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    println!(
        "mesh       {} (node {}, {} peers, map version {})",
        text(&v["mesh_ip"]),
        text(&v["name"]),
        peers.len(),
        text(&v["map_version"])
    );
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let bytes = |k: &str| format::bytes(p[k].as_u64().unwrap_or(0));
            let handshake = p["last_handshake_ms"]
                .as_u64()
                .map_or("never".into(), |ms| format!("{} ago", format::duration(ms)));
            vec![
                text(&p["name"]),
                text(&p["mesh_ip"]),
                text(&p["path"]),
                bytes("tx_bytes"),
                bytes("rx_bytes"),
                handshake,
            ]
        })
        .collect();
    if !rows.is_empty() {
        format::table(
            &["PEER", "MESH IP", "PATH", "SENT", "RECEIVED", "HANDSHAKE"],
            &rows,
        );
    }
}

/// A byte stream to `peer`'s `port` over the mesh of the worker whose status server is at
/// `addr`: `GET /mesh/connect` with `Upgrade`, and after `101` the connection itself.
pub async fn open_stream(addr: &str, peer: &str, port: u16) -> anyhow::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("the worker's status server {addr} does not answer"))?;
    let req = format!(
        "GET /mesh/connect?peer={}&port={port} HTTP/1.1\r\nHost: {addr}\r\n\
         Connection: Upgrade\r\nUpgrade: {UPGRADE}\r\n\r\n",
        encode(peer)
    );
    s.write_all(req.as_bytes()).await?;
    let head = read_head(&mut s).await?;
    let status = parse_status(&head)?;
    if status == 101 {
        return Ok(s);
    }
    let len = content_length(&head).unwrap_or(0).min(64 * 1024);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.ok();
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    bail!("{}", refusal(status, &body))
}

/// The response head, read byte by byte so no byte of the stream after it is taken.
async fn read_head(s: &mut TcpStream) -> anyhow::Result<String> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        anyhow::ensure!(
            head.len() < 16 * 1024,
            "the worker's answer head is too long"
        );
        let b = s
            .read_u8()
            .await
            .context("the worker closed the connection before answering")?;
        head.push(b);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn parse_status(head: &str) -> anyhow::Result<u16> {
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("the worker answered something that is not HTTP: {head:?}"))
}

fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_heads_parse() {
        let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
                    Content-Length: 42\r\n\r\n";
        assert_eq!(parse_status(head).unwrap(), 503);
        assert_eq!(content_length(head), Some(42));
        assert!(parse_status("garbage").is_err());
        let body = serde_json::json!({"error": "the mesh is off on this node"});
        assert_eq!(refusal(503, &body), "the mesh is off on this node");
        assert_eq!(refusal(502, &Value::Null), "the worker answered 502");
    }
}
