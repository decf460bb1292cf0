//! `citadel nodes ls | revoke NODE`: the nodes approved on a control plane (`--nexus`,
//! `CITADEL_NEXUS_URL`, else the local one), each with its organization and whether its credential
//! is active or revoked, and revoking one (its next request is refused). Needs the admin token;
//! it never prints a credential.

use std::path::Path;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::remote::encode;

#[derive(Debug, Args)]
pub struct NodesArgs {
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: NodesCommand,
}

#[derive(Debug, Subcommand)]
pub enum NodesCommand {
    /// The approved nodes: id, name, organization, credential state, last seen.
    Ls,
    /// Revoke a node's credential: its next request is refused (401) and its WebSocket closed.
    /// The node can join again only through `citadel init` and a new approval.
    Revoke {
        /// The node id, as `citadel nodes ls` shows it.
        node: String,
    },
}

pub async fn run(args: NodesArgs, data_dir: &Path) -> anyhow::Result<()> {
    let plane = args.plane.locate(data_dir)?;
    let v = match &args.command {
        NodesCommand::Ls => plane.call(Method::GET, "/api/v1/credentials", None).await?,
        NodesCommand::Revoke { node } => {
            let path = format!("/api/v1/credentials/{}/revoke", encode(node));
            let v = plane.call(Method::POST, &path, None).await?;
            if !args.json {
                println!(
                    "revoked {} (org {})",
                    v["node_id"].as_str().unwrap_or(node),
                    v["org"].as_str().unwrap_or("")
                );
                return Ok(());
            }
            v
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    let rows: Vec<Vec<String>> = v["nodes"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|n| {
            vec![
                s(&n["node_id"]),
                s(&n["name"]),
                s(&n["org"]),
                s(&n["state"]),
                s(&n["last_seen"]),
            ]
        })
        .collect();
    if rows.is_empty() {
        println!("no node was approved on this control plane");
    } else {
        crate::format::table(&["NODE", "NAME", "ORG", "STATE", "LAST SEEN"], &rows);
    }
    Ok(())
}
