//! Side effects counted outside the workers: a host folder mounted into every worker at
//! [`Effects::INSIDE`], where each `shell_command` job of [`Effects::job`] appends one line, its
//! job id, to one file after sleeping a while. A job whose command ran to its end twice (on two
//! nodes, or twice on one) leaves two lines, whatever the workers' events and journals say; a
//! command killed before its end (a worker fencing itself, a SIGKILL) leaves none. Reads the
//! file and judges; it never runs or reaches a worker.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::history::History;
use crate::producer::{Expect, JobSpec};
use crate::topology::{Topology, WorkerSpec};

/// The side-effect folder of one scenario.
#[derive(Debug, Clone)]
pub struct Effects {
    dir: PathBuf,
}

impl Effects {
    /// Where the folder is mounted in the workers.
    pub const INSIDE: &'static str = "/effects";
    /// The file the jobs append to, in that folder.
    const FILE: &'static str = "lines";

    /// Creates the folder in the scenario's host folder.
    pub fn new(t: &Topology) -> Result<Self> {
        let dir = t.dir().join("effects");
        std::fs::create_dir_all(&dir).context("creating the side-effect folder")?;
        Ok(Self { dir })
    }

    /// `spec` with the folder mounted and `shell_command` enabled.
    pub fn worker(&self, spec: WorkerSpec) -> WorkerSpec {
        spec.flag("--enable-shell").mount(&self.dir, Self::INSIDE)
    }

    /// A `shell_command` job that sleeps `secs` (`/bin/sleep`, fractions allowed) and then
    /// appends its id as one line: the side effect happens only if the command runs to its end.
    pub fn job(id: impl Into<String>, secs: f64) -> JobSpec {
        let id = id.into();
        let command = format!(
            "/bin/sleep {secs}; echo {id} >> {}/{}",
            Self::INSIDE,
            Self::FILE
        );
        JobSpec::shell(id, &command)
    }

    /// How many times each job's line was appended.
    pub fn counts(&self) -> Result<HashMap<String, usize>> {
        let path = self.dir.join(Self::FILE);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            read => read.with_context(|| format!("reading {}", path.display()))?,
        };
        let mut counts = HashMap::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            *counts.entry(line.to_owned()).or_default() += 1;
        }
        Ok(counts)
    }

    /// Every `shell_command` job of `history` meant to complete must have left exactly one line:
    /// the side effects in all, and `(job id, times)` for each job that did not.
    pub fn check(&self, history: &History) -> Result<(usize, Vec<(String, usize)>)> {
        let counts = self.counts()?;
        let mut wrong = Vec::new();
        let mut total = 0;
        for job in history
            .jobs
            .iter()
            .filter(|j| j.spec.job_type == "shell_command")
        {
            let n = counts.get(&job.spec.id).copied().unwrap_or_default();
            total += n;
            if job.spec.expect == Expect::Complete && n != 1 {
                wrong.push((job.spec.id.clone(), n));
            }
        }
        Ok((total, wrong))
    }
}
