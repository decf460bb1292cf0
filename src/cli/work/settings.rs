//! `citadel work`'s worker settings, resolved once before anything starts: the node's name and
//! worker id, the runner's limits, the journal's retention, the status server and the heartbeat
//! (defaults < config file < `CITADEL_*` environment < flags; clap folds the environment into
//! the flags). The defaults come from the one table of settings, [`config::SETTINGS`], which also
//! feeds `citadel config show`; a test checks that its flags and variables are `WorkArgs`'. The
//! transports' settings are resolved by [`super::transport`], except how long what they leave on
//! the broker lives ([`Limits`]: acked entries, event streams, status hashes, completion
//! records, dead letters). This module only reads: it must never start anything.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use citadel_journal::RetentionPolicy;

use super::{duration, WorkArgs};
use crate::config::{self, FileConfig};
use crate::format;
use crate::runner::RunnerConfig;
use crate::status::server::StatusListen;
use citadel_transports::{NatsConfig, RedisConfig};

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

/// The flags of [`Limits`] (flattened into `WorkArgs`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(super) struct LimitArgs {
    /// Keep acked Redis entries in the job streams (for other consumer groups) and trim them
    /// periodically below what every group still needs; by default an ack deletes the entry.
    #[arg(long, env = "CITADEL_KEEP_ACKED")]
    keep_acked: bool,
    /// How long a job's Redis event stream lives after its terminal event (default 5m).
    #[arg(long, env = "CITADEL_EVENTS_GRACE", value_name = "DURATION")]
    events_grace: Option<String>,
    /// How long a job's Redis status hash lives after its last update (default 7d).
    #[arg(long, env = "CITADEL_STATUS_TTL", value_name = "DURATION")]
    status_ttl: Option<String>,
    /// How long a job's Redis completion record lives (default 7d): a copy of the job
    /// delivered later runs again.
    #[arg(long, env = "CITADEL_DONE_TTL", value_name = "DURATION")]
    done_ttl: Option<String>,
    /// The most dead letters kept per dead-letter stream; the oldest beyond are dropped,
    /// counted and logged (default 100000).
    #[arg(long, env = "CITADEL_DLQ_MAX_LEN", value_name = "N")]
    dlq_max_len: Option<u64>,
    /// Dead letters older than this are dropped, counted and logged (default 30d; `0`: no age
    /// limit).
    #[arg(long, env = "CITADEL_DLQ_MAX_AGE", value_name = "DURATION")]
    dlq_max_age: Option<String>,
}

/// How long what the transports leave on their brokers lives, so nothing grows without bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Limits {
    pub keep_acked: bool,
    pub events_grace: Duration,
    pub status_ttl: Duration,
    pub done_ttl: Duration,
    pub dlq_max_len: u64,
    pub dlq_max_age: Duration,
}

impl Limits {
    pub fn resolve(args: &LimitArgs, file: &FileConfig) -> anyhow::Result<Self> {
        let t = &file.transports;
        let r = t.redis.clone().unwrap_or_default();
        let d = t.dead_letters.clone().unwrap_or_default();
        let dur = |name: &str, key: &str, flag: Option<&String>, file: Option<&String>| {
            duration(name, flag, file, default_duration(key)?)
        };
        let dlq_max_len = match args.dlq_max_len.or(d.max_len) {
            Some(n) => n,
            None => default_of("transports.dead_letters.max_len")?,
        };
        if dlq_max_len == 0 {
            anyhow::bail!("setting `dlq_max_len` must be at least 1");
        }
        Ok(Self {
            keep_acked: args.keep_acked || r.keep_acked.unwrap_or(false),
            events_grace: dur(
                "events_grace",
                "transports.redis.events_grace",
                args.events_grace.as_ref(),
                r.events_grace.as_ref(),
            )?,
            status_ttl: dur(
                "status_ttl",
                "transports.redis.status_ttl",
                args.status_ttl.as_ref(),
                r.status_ttl.as_ref(),
            )?,
            done_ttl: dur(
                "done_ttl",
                "transports.redis.done_ttl",
                args.done_ttl.as_ref(),
                r.done_ttl.as_ref(),
            )?,
            dlq_max_len,
            dlq_max_age: dur(
                "dlq_max_age",
                "transports.dead_letters.max_age",
                args.dlq_max_age.as_ref(),
                d.max_age.as_ref(),
            )?,
        })
    }

    pub fn apply_redis(&self, c: &mut RedisConfig) {
        c.keep_acked = self.keep_acked;
        c.events_grace = self.events_grace;
        c.status_ttl = self.status_ttl;
        c.done_ttl = self.done_ttl;
        c.dlq_max_len = self.dlq_max_len;
        c.dlq_max_age = self.dlq_max_age;
    }

    /// The dead-letter caps (applied when the `DLQ` stream is created).
    pub fn apply_nats(&self, c: &mut NatsConfig) {
        c.dlq_max_msgs = i64::try_from(self.dlq_max_len).unwrap_or(i64::MAX);
        c.dlq_max_age = self.dlq_max_age;
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

    #[test]
    fn limits_come_from_the_file_and_the_flags_win() {
        let file = FileConfig::parse(
            "transports:\n  redis:\n    keep_acked: true\n    events_grace: 1m\n\
             \x20 dead_letters:\n    max_len: 10\n    max_age: 1h\n",
        )
        .unwrap();
        let args = LimitArgs {
            dlq_max_len: Some(5),
            ..LimitArgs::default()
        };
        let l = Limits::resolve(&args, &file).unwrap();
        assert!(l.keep_acked);
        assert_eq!(l.events_grace, Duration::from_secs(60));
        assert_eq!(l.dlq_max_len, 5);
        assert_eq!(l.dlq_max_age, Duration::from_secs(3600));
        let zero = LimitArgs {
            dlq_max_len: Some(0),
            ..LimitArgs::default()
        };
        assert!(Limits::resolve(&zero, &file).is_err());
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
        let limits = Limits::resolve(&LimitArgs::default(), &FileConfig::default()).unwrap();
        let mut redis = RedisConfig::new("redis://x/", "c");
        let defaults = redis.clone();
        limits.apply_redis(&mut redis);
        assert_eq!(redis, defaults, "the table's limits are the Redis defaults");
        let mut nats = NatsConfig::new("nats://x", "c");
        let defaults = nats.clone();
        limits.apply_nats(&mut nats);
        assert_eq!(nats, defaults, "the table's caps are the NATS defaults");
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
