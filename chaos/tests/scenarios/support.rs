//! What every scenario does around its faults: a topology of one broker (Redis, or NATS) and
//! named workers, a producer on it, and at the end the history, the check, the figures and (on a
//! violation) the workers' last log lines.

use std::time::Duration;

use citadel_chaos::{check, Broker, Figures, History, Producer, Topology, WorkerSpec};

/// The Redis broker's name in every Redis topology.
pub const BROKER: &str = "redis";

/// A topology with one Redis and a worker per `(name, extra flags)`, and a producer on it.
pub async fn setup(
    scenario: &str,
    workers: &[(&str, &[(&str, &str)])],
) -> anyhow::Result<(Topology, Producer)> {
    setup_on(Broker::Redis, scenario, workers).await
}

/// [`setup`] on a broker of `kind`, named `kind.name()`.
pub async fn setup_on(
    kind: Broker,
    scenario: &str,
    workers: &[(&str, &[(&str, &str)])],
) -> anyhow::Result<(Topology, Producer)> {
    let mut t = Topology::new(scenario)?;
    t.start_broker(kind, kind.name()).await?;
    let broker = t.host(kind.name());
    for (name, flags) in workers {
        let mut spec = WorkerSpec::on(kind, name, &broker);
        for (flag, value) in flags.iter() {
            spec = spec.arg(flag, value);
        }
        t.start_worker(spec).await?;
    }
    let p = Producer::new(&t.broker_url(kind.name()).await?);
    Ok((t, p))
}

/// Waits (up to `timeout`) until every job sent is terminal, checks the history, prints the
/// figures, and shows the workers' logs when something is wrong.
pub async fn finish(
    scenario: &str,
    t: &mut Topology,
    p: &Producer,
    timeout: Duration,
) -> anyhow::Result<(Figures, History)> {
    let history = History::settle(p, timeout).await?;
    t.unsupervise().await;
    let figures = check(&history, &t.faults());
    figures.report(scenario);
    if !figures.violations.is_empty() {
        for w in t.worker_names() {
            eprintln!("--- last log lines of {w}:\n{}", t.logs(&w, 60).await);
        }
    }
    Ok((figures, history))
}
