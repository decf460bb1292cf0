//! Every worker's journal at the end of a scenario, read with `citadel journal export` (the JSON
//! lines of docs/journal.md) from each worker's data folder once the workers are stopped, and
//! merged: the truth about what ran where, which the broker's events can only approximate (a
//! `start` may be lost with a killed worker, and events say nothing about which node journaled a
//! success). The checker takes from it the **duplicates across nodes** (a job with a `succeeded`
//! attempt in two journals, or two `succeeded` attempts in one) and the **stuck** jobs (left
//! `running` in a journal: an attempt started and never ended).
//!
//! Reading only: the export runs in a one-off container of the citadel image on the worker's
//! folder (no network), and never writes to a journal (the CLI runs no recovery); the folding is
//! pure ([`Journals::from_exports`]).

use std::collections::HashMap;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::topology::Topology;

/// One journaled event, as much of it as the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub job: String,
    /// `received`, `started`, `succeeded`, `failed`, `interrupted`, `acked`, …
    pub kind: String,
    pub at_ms: u64,
}

/// One worker's journal, in append order.
#[derive(Debug, Clone, Default)]
pub struct NodeJournal {
    pub node: String,
    pub entries: Vec<Entry>,
}

/// The journals of every worker of a scenario (empty: not read, nothing is checked).
#[derive(Debug, Clone, Default)]
pub struct Journals {
    pub nodes: Vec<NodeJournal>,
}

/// The events that end an attempt (docs/journal.md).
const TERMINAL: [&str; 5] = [
    "succeeded",
    "failed",
    "cancelled",
    "timed_out",
    "interrupted",
];

impl Journals {
    /// Stops every worker of `t` (SIGKILL: the journal stays exactly as the run left it, with no
    /// drain to tidy it up) and exports each one's journal. A worker found dead (a crash point
    /// the supervisor no longer restarts) is started once first, so its crash recovery runs as
    /// after any restart: only what a live worker leaves `running` counts as stuck.
    pub async fn read(t: &Topology) -> Result<Self> {
        t.revive_workers().await?;
        let mut exports = Vec::new();
        for name in t.worker_names() {
            t.stop_worker(&name).await?;
            exports.push((name.clone(), export(t, &name).await?));
        }
        Self::from_exports(&exports)
    }

    /// Parses `(node, JSON lines of citadel journal export)` pairs.
    pub fn from_exports(exports: &[(String, String)]) -> Result<Self> {
        let mut nodes = Vec::new();
        for (node, text) in exports {
            let mut entries = Vec::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line)
                    .with_context(|| format!("a line of {node}'s journal export: {line}"))?;
                let field = |v: &Value| v.as_str().map(str::to_owned);
                let (Some(job), Some(kind)) = (field(&v["job_id"]), field(&v["event"]["type"]))
                else {
                    bail!("{node}'s journal export: no job_id or event type in {line}");
                };
                let at_ms = v["at_ms"].as_u64().unwrap_or_default();
                entries.push(Entry { job, kind, at_ms });
            }
            nodes.push(NodeJournal {
                node: node.clone(),
                entries,
            });
        }
        Ok(Self { nodes })
    }

    /// Whether any journal was read.
    pub fn is_read(&self) -> bool {
        !self.nodes.is_empty()
    }

    /// The node of each `succeeded` event of each job (a job that ran once has one).
    pub fn successes(&self) -> HashMap<&str, Vec<&str>> {
        self.by_job("succeeded")
    }

    /// The node of each `started` event of each job (attempts begun, whatever their end).
    pub fn starts(&self) -> HashMap<&str, Vec<&str>> {
        self.by_job("started")
    }

    /// The node of each event of `kind` of each job, in node order.
    pub fn by_job(&self, kind: &str) -> HashMap<&str, Vec<&str>> {
        let mut by_job: HashMap<&str, Vec<&str>> = HashMap::new();
        for n in &self.nodes {
            for e in n.entries.iter().filter(|e| e.kind == kind) {
                by_job.entry(&e.job).or_default().push(&n.node);
            }
        }
        by_job
    }

    /// `(node, job)` for every job whose last attempt in that node's journal started and never
    /// ended: left `running` with nothing running it.
    pub fn running(&self) -> Vec<(&str, &str)> {
        let mut out = Vec::new();
        for n in &self.nodes {
            let mut open: HashMap<&str, bool> = HashMap::new();
            for e in &n.entries {
                if e.kind == "started" {
                    open.insert(&e.job, true);
                } else if TERMINAL.contains(&e.kind.as_str()) {
                    open.insert(&e.job, false);
                }
            }
            let mut left: Vec<&str> = open
                .into_iter()
                .filter(|(_, o)| *o)
                .map(|(j, _)| j)
                .collect();
            left.sort_unstable();
            out.extend(left.into_iter().map(|j| (n.node.as_str(), j)));
        }
        out
    }
}

/// `citadel journal export` of worker `name`'s journal, in a one-off container of the citadel
/// image with the worker's data folder at `/data` (the worker must be stopped: sled locks it).
async fn export(t: &Topology, name: &str) -> Result<String> {
    let (image, tag) = crate::CITADEL_IMAGE;
    let volume = format!("{}:/data", t.worker_dir(name).display());
    let label = format!("citadel.chaos={}", t.id());
    let out = tokio::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--label",
            &label,
            "-v",
            &volume,
        ])
        .arg(format!("{image}:{tag}"))
        .args(["--log", "error", "journal", "export", "--data-dir", "/data"])
        .output()
        .await
        .context("docker run citadel journal export")?;
    if !out.status.success() {
        bail!(
            "citadel journal export of `{name}` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).context("the journal export is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(job: &str, kind: &str) -> String {
        format!(
            r#"{{"seq":1,"at_ms":5,"job_id":"{job}","transport":"redis","event":{{"type":"{kind}","data":{{}}}}}}"#
        )
    }

    fn export(lines: &[(&str, &str)]) -> String {
        lines
            .iter()
            .map(|(j, k)| line(j, k))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn finds_successes_on_two_nodes_and_jobs_left_running() {
        let w1 = export(&[
            ("a", "received"),
            ("a", "started"),
            ("a", "succeeded"),
            ("a", "acked"),
            ("b", "received"),
            ("b", "started"),
            ("c", "started"),
            ("c", "interrupted"),
        ]);
        let w2 = export(&[("a", "started"), ("a", "succeeded"), ("c", "started")]);
        let j = Journals::from_exports(&[("w1".into(), w1), ("w2".into(), w2)]).unwrap();
        assert_eq!(j.successes()["a"], vec!["w1", "w2"]);
        assert_eq!(j.starts()["c"], vec!["w1", "w2"]);
        assert_eq!(j.running(), vec![("w1", "b"), ("w2", "c")]);
        assert!(Journals::from_exports(&[("w1".into(), "{}".into())]).is_err());
    }
}
