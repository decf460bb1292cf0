//! The configuration file (`citadel.yaml`): the parts of the node manifest that `citadel work`
//! reads today — node name, worker settings, the Redis transport, the shell permission. Parsing
//! is strict: an unknown key is an error that names it, so a typo never silently falls back to a
//! default. Values are layered by the commands: defaults < this file < `CITADEL_*` environment
//! < flags. This module only reads; it never writes the file.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub node: NodeSection,
    #[serde(default)]
    pub worker: WorkerSection,
    #[serde(default)]
    pub transports: TransportsSection,
    #[serde(default)]
    pub permissions: PermissionsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSection {
    pub concurrency: Option<usize>,
    /// e.g. `30s`.
    pub drain_timeout: Option<String>,
    /// e.g. `1h`.
    pub default_timeout: Option<String>,
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub journal: JournalSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalSection {
    /// Settled jobs older than this are compacted away, e.g. `7d`; `0` keeps everything.
    pub retention: Option<String>,
    /// Then the oldest settled jobs go until the events take at most this, e.g. `1GiB`.
    pub max_size: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransportsSection {
    pub redis: Option<RedisSection>,
    pub nexus: Option<NexusSection>,
    pub nats: Option<NatsSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSection {
    /// `nats://host:port` (comma separated for a cluster).
    pub url: Option<String>,
    /// The JetStream stream of the job subjects (default `JOBS`).
    pub stream: Option<String>,
    /// The job subjects to consume (default `[jobs.v1.gpu-general]`).
    pub subjects: Option<Vec<String>>,
    /// The durable pull consumer (default `workers`).
    pub consumer: Option<String>,
    /// A `.creds` file (the credentials never go into this file).
    pub credentials_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NexusSection {
    /// `http://host:port` of the control plane.
    pub url: Option<String>,
    /// A file holding the bearer token (the token itself never goes into this file).
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSection {
    pub url: Option<String>,
    pub streams: Option<Vec<String>>,
    pub group: Option<String>,
    /// e.g. `60s`.
    pub lease: Option<String>,
    /// e.g. `16MiB`.
    pub max_payload: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermissionsSection {
    #[serde(default)]
    pub shell: ShellSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShellSection {
    pub enabled: Option<bool>,
    pub allow: Option<Vec<String>>,
    /// The name of an environment variable holding the passcode (the passcode itself never
    /// goes into the file).
    pub passcode_env: Option<String>,
    pub max_output: Option<String>,
}

impl FileConfig {
    /// Reads `path`; a missing file is an error only when `required`.
    pub fn load(path: &Path, required: bool) -> anyhow::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Self::default())
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the config file {}", path.display()))
            }
        };
        Self::parse(&text).with_context(|| format!("in the config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Self> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        Ok(yaml_serde::from_str(text)?)
    }
}

/// Where `citadel work` looks for its config: `--config`/`CITADEL_CONFIG`, else
/// `DATA_DIR/citadel.yaml` when it exists.
pub fn config_path(explicit: Option<&Path>, data_dir: &Path) -> (PathBuf, bool) {
    match explicit {
        Some(p) => (p.to_path_buf(), true),
        None => (data_dir.join("citadel.yaml"), false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses() {
        let c = FileConfig::parse(
            "node:\n  name: gpu-1\nworker:\n  concurrency: 4\n  drain_timeout: 10s\n\
             transports:\n  redis:\n    url: redis://127.0.0.1:7000\n    streams: [a, b]\n    lease: 5s\n\
             permissions:\n  shell:\n    enabled: true\n    allow: [echo]\n",
        )
        .unwrap();
        assert_eq!(c.node.name.as_deref(), Some("gpu-1"));
        assert_eq!(c.worker.concurrency, Some(4));
        let redis = c.transports.redis.unwrap();
        assert_eq!(redis.streams.unwrap(), vec!["a", "b"]);
        assert_eq!(c.permissions.shell.enabled, Some(true));
    }

    #[test]
    fn the_nats_section_parses() {
        let c = FileConfig::parse(
            "transports:\n  nats:\n    url: nats://127.0.0.1:4222\n    stream: JOBS\n    \
             subjects: [jobs.v1.a, jobs.v1.b]\n    consumer: fleet\n    credentials_file: /etc/n.creds\n",
        )
        .unwrap();
        let nats = c.transports.nats.unwrap();
        assert_eq!(nats.subjects.unwrap(), vec!["jobs.v1.a", "jobs.v1.b"]);
        assert_eq!(nats.consumer.as_deref(), Some("fleet"));
        assert!(FileConfig::parse("transports:\n  nats:\n    subject: x\n").is_err());
    }

    #[test]
    fn unknown_keys_are_errors_that_name_the_key() {
        let err = FileConfig::parse("worker:\n  concurency: 4\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("concurency") && msg.contains("line 2"),
            "{msg}"
        );
        assert!(FileConfig::parse("").unwrap().worker.concurrency.is_none());
    }
}
