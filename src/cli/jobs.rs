//! `citadel jobs ls | show | cancel | dlq | requeue | purge`: the jobs of a control plane (`--nexus`,
//! `CITADEL_NEXUS_URL`, else the local one). Read-only except `cancel`, `requeue` and `purge`.

use std::path::Path;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::Value;

use super::remote::encode;

#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(flatten)]
    plane: super::remote::PlaneArgs,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: JobsCommand,
}

#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// Jobs, newest first.
    Ls {
        /// queued, leased, succeeded, failed, cancelled or dead.
        #[arg(long)]
        state: Option<String>,
        #[arg(short = 'n', long, default_value_t = 50)]
        limit: usize,
    },
    /// One job: state, attempts, result, errors.
    Show { id: String },
    /// Cancel a queued or running job.
    Cancel { id: String },
    /// The dead-letter list.
    Dlq,
    /// Put a dead-lettered job back in the queue.
    Requeue { id: String },
    /// Remove dead-lettered jobs for good (a job that is not dead-lettered is refused).
    Purge {
        #[arg(required_unless_present = "all_dead")]
        ids: Vec<String>,
        /// Every dead-lettered job.
        #[arg(long)]
        all_dead: bool,
    },
}

pub async fn run(args: JobsArgs, data_dir: &Path) -> anyhow::Result<()> {
    let plane = args.plane.locate(data_dir)?;
    let (list, v) = match &args.command {
        JobsCommand::Ls { state, limit } => {
            let mut path = format!("/api/v1/jobs?limit={limit}");
            if let Some(s) = state {
                path.push_str(&format!("&state={}", encode(s)));
            }
            (true, plane.call(Method::GET, &path, None).await?)
        }
        JobsCommand::Dlq => (true, plane.call(Method::GET, "/api/v1/dlq", None).await?),
        JobsCommand::Show { id } => {
            let path = format!("/api/v1/jobs/{}", encode(id));
            (false, plane.call(Method::GET, &path, None).await?)
        }
        JobsCommand::Cancel { id } => {
            let path = format!("/api/v1/jobs/{}/cancel", encode(id));
            (false, plane.call(Method::POST, &path, None).await?)
        }
        JobsCommand::Purge { ids, all_dead } => {
            let body = serde_json::json!({ "ids": ids, "all_dead": all_dead });
            let path = "/api/v1/dlq/purge";
            (false, plane.call(Method::POST, path, Some(&body)).await?)
        }
        JobsCommand::Requeue { id } => {
            let path = format!("/api/v1/dlq/{}/requeue", encode(id));
            (false, plane.call(Method::POST, &path, None).await?)
        }
    };
    if args.json || !list {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let s = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = v["jobs"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|j| {
            vec![
                s(&j["id"]),
                s(&j["type"]),
                s(&j["state"]),
                s(&j["attempts"]),
                s(&j["updated_at"]),
                s(&j["dead_reason"])
                    .chars()
                    .chain(s(&j["error"]).chars())
                    .chain(waits_for(j).chars())
                    .take(60)
                    .collect(),
            ]
        })
        .collect();
    crate::format::table(
        &["ID", "TYPE", "STATE", "ATTEMPTS", "UPDATED", "DETAIL"],
        &rows,
    );
    Ok(())
}

/// What a queued job waits for: the tags it requires, the node it is for.
fn waits_for(j: &Value) -> String {
    if j["state"] != "queued" {
        return String::new();
    }
    let mut parts = Vec::new();
    if let Some(tags) = j["requires"].as_array().filter(|a| !a.is_empty()) {
        let tags: Vec<&str> = tags.iter().filter_map(Value::as_str).collect();
        parts.push(format!("needs {}", tags.join(" ")));
    }
    if let Some(node) = j["target_node"].as_str() {
        parts.push(format!("for node {node}"));
    }
    parts.join(", ")
}
