//! `citadel work`'s worker settings, resolved once before anything starts: the node's name and
//! worker id, the runner's limits, the journal's retention, the status server and the heartbeat
//! (defaults < config file < `CITADEL_*` environment < flags; clap folds the environment into
//! the flags). The transports' settings are resolved by [`super::transport`]. This module only
//! reads: it must never start anything.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use citadel_journal::RetentionPolicy;

use super::{duration, WorkArgs};
use crate::config::FileConfig;
use crate::format;
use crate::runner::RunnerConfig;
use crate::status::server::StatusListen;

/// Settled jobs are kept this long by default.
const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// A job whose lease is not renewed for this long goes to another worker.
const DEFAULT_LEASE: Duration = Duration::from_secs(60);

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
    c.concurrency = args.concurrency.or(w.concurrency).unwrap_or(1).max(1);
    c.drain_timeout = duration(
        "drain_timeout",
        args.drain_timeout.as_ref(),
        w.drain_timeout.as_ref(),
        c.drain_timeout,
    )?;
    c.default_timeout = duration(
        "default_timeout",
        args.default_timeout.as_ref(),
        w.default_timeout.as_ref(),
        c.default_timeout,
    )?;
    c.max_attempts = args
        .max_attempts
        .or(w.max_attempts)
        .unwrap_or(c.max_attempts)
        .max(1);
    let redis = file.transports.redis.as_ref();
    c.lease = duration(
        "lease",
        args.lease.as_ref(),
        redis.and_then(|r| r.lease.as_ref()),
        DEFAULT_LEASE,
    )?;
    Ok(c)
}

/// The journal's retention from the flags, environment and config file.
fn retention_policy(args: &WorkArgs, file: &FileConfig) -> anyhow::Result<RetentionPolicy> {
    let j = &file.worker.journal;
    let age = args.journal_retention.as_ref().or(j.retention.as_ref());
    let max_age = match age.map(String::as_str) {
        None => Some(DEFAULT_RETENTION),
        Some("0") => None,
        Some(a) => Some(format::parse_duration(a).context("setting `journal_retention`")?),
    };
    let size = args.journal_max_size.as_ref().or(j.max_size.as_ref());
    let max_bytes = size
        .map(|s| format::parse_size(s).context("setting `journal_max_size`"))
        .transpose()?;
    Ok(RetentionPolicy { max_age, max_bytes })
}
