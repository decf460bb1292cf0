//! What every scenario does around its faults: a topology of one broker (Redis, or NATS) and
//! named workers, a producer on it, and at the end the history, the workers' journals, the
//! check, the figures and (on a violation) the workers' last log lines.

use std::time::Duration;

use citadel_chaos::{
    check, Broker, Effects, Figures, History, Journals, Producer, Topology, WorkerSpec,
};

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
        t.start_worker(spec(WorkerSpec::on(kind, name, &broker), flags))
            .await?;
    }
    let p = Producer::new(&t.broker_url(kind.name()).await?);
    Ok((t, p))
}

/// `spec` with `flags` set.
pub fn spec(mut spec: WorkerSpec, flags: &[(&str, &str)]) -> WorkerSpec {
    for (flag, value) in flags {
        spec = spec.arg(flag, value);
    }
    spec
}

/// What a scenario ends with.
pub struct End {
    pub figures: Figures,
    pub history: History,
    pub journals: Journals,
}

/// Waits (up to `timeout`) until every job sent is terminal, stops the workers and reads their
/// journals, checks both, prints the figures, and shows the workers' logs when something is
/// wrong.
pub async fn finish(
    scenario: &str,
    t: &mut Topology,
    p: &Producer,
    timeout: Duration,
) -> anyhow::Result<End> {
    finish_counting(scenario, t, p, timeout, None).await
}

/// [`finish`], also checking that every shell job's side effect in `effects` happened once.
pub async fn finish_counting(
    scenario: &str,
    t: &mut Topology,
    p: &Producer,
    timeout: Duration,
    effects: Option<&Effects>,
) -> anyhow::Result<End> {
    let history = History::settle(p, timeout).await?;
    t.unsupervise().await;
    let journals = Journals::read(t).await?;
    let mut figures = check(&history, &t.faults(), &journals);
    if let Some(effects) = effects {
        let (happened, wrong) = effects.check(&history)?;
        println!("chaos: {scenario}: {happened} side effects counted on the host");
        for (id, n) in wrong {
            figures.raise_duplicated(&id, n.saturating_sub(1));
            figures.add_violation(format!(
                "the side effect of {id} happened {n} times (once expected)"
            ));
        }
    }
    figures.report(scenario);
    if !figures.violations.is_empty() {
        for w in t.worker_names() {
            eprintln!("--- last log lines of {w}:\n{}", t.logs(&w, 60).await);
        }
    }
    Ok(End {
        figures,
        history,
        journals,
    })
}
