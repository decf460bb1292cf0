//! `citadel work`'s worker settings, resolved once before anything starts: the node's name and
//! worker id, the runner's limits, the journal's retention, the status server and the heartbeat
//! (defaults < config file < `CITADEL_*` environment < flags; clap folds the environment into
//! the flags). The defaults come from the one table of settings, [`config::SETTINGS`], which also
//! feeds `citadel config show`; a test checks that its flags and variables are `WorkArgs`'. The
//! transports' settings are resolved by [`super::transport`]. This module only
//! reads: it must never start anything.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use citadel_journal::RetentionPolicy;

use super::{duration, WorkArgs};
use crate::config::{self, FileConfig};
use crate::format;
use crate::runner::RunnerConfig;
use crate::status::server::StatusListen;

/// The default of `key` from the one table of settings ([`config::SETTINGS`], which `citadel
/// config show` prints).
fn default_of<T: std::str::FromStr>(key: &str) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text = config::default_of(key);
    text.parse()
        .with_context(|| format!("the default of `{key}` ({text:?})"))
}

/// The default duration of `key` from the table.
fn default_duration(key: &str) -> anyhow::Result<Duration> {
    let text = config::default_of(key);
    format::parse_duration(text).with_context(|| format!("the default of `{key}` ({text:?})"))
}

/// Everything `citadel work` runs with, apart from the transports and the handlers.
#[derive(Debug)]
pub(super) struct Settings {
    pub node_name: String,
    /// The worker id (the transports' consumer name), stable across restarts.
    pub consumer: String,
    pub runner: RunnerConfig,
    pub retention: RetentionPolicy,
    pub status_listen: StatusListen,
    pub heartbeat_every: Duration,
}

impl Settings {
    pub fn resolve(args: &WorkArgs, file: &FileConfig, data_dir: &Path) -> anyhow::Result<Self> {
        let node_name = args
            .node_name
            .clone()
            .or(file.node.name.clone())
            .unwrap_or_else(crate::node::host_name);
        let instance = crate::node::instance_id(data_dir)?;
        let consumer = crate::node::consumer_name(&node_name, &instance);
        let runner = runner_config(args, file, &node_name, &consumer)?;
        let w = &file.worker;
        let status_listen = args
            .status_listen
            .as_ref()
            .or(w.status_listen.as_ref())
            .map_or(Ok(StatusListen::Auto), |s| s.parse())
            .context("setting `status_listen`")?;
        let heartbeat_every = duration(
            "heartbeat_interval",
            args.heartbeat_interval.as_ref(),
            w.heartbeat_interval.as_ref(),
            crate::status::heartbeat::DEFAULT_INTERVAL,
        )?;
        Ok(Self {
            retention: retention_policy(args, file)?,
            node_name,
            consumer,
            runner,
            status_listen,
            heartbeat_every,
        })
    }
}

/// The runner's limits, and the lease every transport uses.
fn runner_config(
    args: &WorkArgs,
    file: &FileConfig,
    node_name: &str,
    consumer: &str,
) -> anyhow::Result<RunnerConfig> {
    let w = &file.worker;
    let mut c = RunnerConfig::new(node_name, consumer);
    c.concurrency = match args.concurrency.or(w.concurrency) {
        Some(n) => n,
        None => default_of("worker.concurrency")?,
    }
    .max(1);
    c.drain_timeout = duration(
        "drain_timeout",
        args.drain_timeout.as_ref(),
        w.drain_timeout.as_ref(),
        default_duration("worker.drain_timeout")?,
    )?;
    c.default_timeout = duration(
        "default_timeout",
        args.default_timeout.as_ref(),
        w.default_timeout.as_ref(),
        default_duration("worker.default_timeout")?,
    )?;
    c.max_attempts = match args.max_attempts.or(w.max_attempts) {
        Some(n) => n,
        None => default_of("worker.max_attempts")?,
    }
    .max(1);
    let redis = file.transports.redis.as_ref();
    c.lease = duration(
        "lease",
        args.lease.as_ref(),
        redis.and_then(|r| r.lease.as_ref()),
        default_duration("transports.redis.lease")?,
    )?;
    Ok(c)
}

/// The journal's retention from the flags, environment and config file.
fn retention_policy(args: &WorkArgs, file: &FileConfig) -> anyhow::Result<RetentionPolicy> {
    let j = &file.worker.journal;
    let age = args.journal_retention.as_ref().or(j.retention.as_ref());
    let max_age = match age.map(String::as_str) {
        None => Some(default_duration("worker.journal.retention")?),
        Some("0") => None,
        Some(a) => Some(format::parse_duration(a).context("setting `journal_retention`")?),
    };
    let size = args.journal_max_size.as_ref().or(j.max_size.as_ref());
    let max_bytes = size
        .map(|s| format::parse_size(s).context("setting `journal_max_size`"))
        .transpose()?;
    Ok(RetentionPolicy { max_age, max_bytes })
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    /// A tiny command to introspect `WorkArgs`' flags.
    #[derive(Debug, clap::Parser)]
    struct Cmd {
        #[command(flatten)]
        args: WorkArgs,
    }

    #[test]
    fn the_table_matches_the_flags_and_its_defaults_parse() {
        let cmd = Cmd::command();
        for s in config::SETTINGS {
            let Some(flag) = s.flag else { continue };
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_long().map(|l| format!("--{l}")).as_deref() == Some(flag))
                .unwrap_or_else(|| panic!("{}: no flag {flag}", s.key));
            let env = arg.get_env().and_then(|e| e.to_str());
            assert_eq!(env, s.env, "{}: the flag's variable", s.key);
        }
        assert_eq!(default_of::<usize>("worker.concurrency").unwrap(), 1);
        assert_eq!(default_of::<u32>("worker.max_attempts").unwrap(), 3);
        for key in [
            "worker.drain_timeout",
            "worker.default_timeout",
            "worker.journal.retention",
            "transports.redis.lease",
        ] {
            default_duration(key).unwrap();
        }
        let r = RunnerConfig::new("n", "w");
        assert_eq!(
            default_duration("worker.drain_timeout").unwrap(),
            r.drain_timeout
        );
        assert_eq!(
            default_duration("worker.default_timeout").unwrap(),
            r.default_timeout
        );
        assert_eq!(default_duration("transports.redis.lease").unwrap(), r.lease);
    }

    /// The defaults `config show` prints are the ones the code uses where the code keeps its
    /// own constant.
    #[test]
    fn the_table_states_the_code_defaults() {
        assert_eq!(
            default_duration("worker.heartbeat_interval").unwrap(),
            crate::status::heartbeat::DEFAULT_INTERVAL
        );
        let auto = citadel_transports::AutoConfig::default();
        assert_eq!(
            default_duration("transports.auto.fallback_after").unwrap(),
            auto.policy.fail_after
        );
        assert_eq!(
            default_duration("transports.auto.upgrade_after").unwrap(),
            auto.policy.recover_after
        );
        assert_eq!(
            default_duration("transports.auto.probe_interval").unwrap(),
            auto.probe_interval
        );
        let size = |key| format::parse_size(config::default_of(key)).unwrap() as usize;
        assert_eq!(
            size("transports.redis.max_payload"),
            citadel_transports::redis::DEFAULT_MAX_PAYLOAD
        );
        assert_eq!(
            size("permissions.shell.max_output"),
            crate::handlers::ShellPolicy::default().max_output
        );
        assert_eq!(
            config::default_of("worker.status_listen")
                .parse::<StatusListen>()
                .unwrap(),
            StatusListen::Auto
        );
    }
}
