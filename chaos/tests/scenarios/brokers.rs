//! Broker faults under load: Redis killed and restarted, NATS (JetStream) killed and restarted,
//! Redis paused for longer than the lease, a worker cut off the network and reconnected, and
//! Redis killed under workers on `--transport auto` (they fall back to a control plane and come
//! back). Each but the last is [`under_load`] with a broker and one [`BrokerFault`].

use std::time::Duration;

use citadel_chaos::gate;
use citadel_chaos::producer::mixed;

use citadel_chaos::{Broker, Connection, Expect, JobSpec, Producer, Topology, WorkerSpec};
use citadel_transports::nats::DEFAULT_STREAM;
use serde_json::json;

use super::support::{finish, setup_on, BROKER};

/// What is done to the system while the load runs.
enum BrokerFault {
    /// SIGKILL the broker three times, 3 s apart, each time down for a second.
    Kill,
    /// `docker pause` the broker this long.
    Pause(Duration),
    /// Disconnect worker `w1` from the network this long.
    CutWorker(Duration),
}

/// Two workers of `broker` with `flags`, `jobs` mixed jobs at `rate` per second, `fault` 2–3 s
/// in, then `after` (sent once the load and the faults are over); every obligation must hold.
async fn under_load(
    name: &str,
    broker: Broker,
    flags: &[(&str, &str)],
    (jobs, rate): (usize, f64),
    fault: BrokerFault,
    after: Vec<JobSpec>,
) -> anyhow::Result<()> {
    if !gate(name) {
        return Ok(());
    }
    let (mut t, p) = setup_on(broker, name, &[("w1", flags), ("w2", flags)]).await?;
    let load = p.spawn(mixed(name, jobs), rate);
    match fault {
        BrokerFault::Kill => {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                t.kill_broker(broker.name(), Duration::from_secs(1)).await?;
                p.set_url(&t.broker_url(broker.name()).await?);
            }
        }
        BrokerFault::Pause(pause) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            t.pause(broker.name(), pause).await?;
        }
        BrokerFault::CutWorker(cut) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            t.cut_network("w1", cut).await?;
        }
    }
    load.await??;
    p.send(after, rate).await?;
    let figures = finish(name, &mut t, &p, Duration::from_secs(120))
        .await?
        .figures;
    if broker == Broker::Nats {
        forgotten_acks(name, &t, &p).await?;
    }
    figures.assert_clean(name);
    Ok(())
}

/// What a killed nats-server 2.9 forgot: completed jobs delivered again after its restart,
/// which the workers' fetchers acked again without running them, jobs another worker had
/// claimed delivered again while it settled them, which they handed back (their logs say so),
/// and acked jobs whose deletion it lost, left in the job stream though its consumer never
/// delivers them again (no job is lost: each has its terminal state).
async fn forgotten_acks(name: &str, t: &Topology, p: &Producer) -> anyhow::Result<()> {
    let (mut reacked, mut held) = (0, 0);
    for w in t.worker_names() {
        let log = t.logs(&w, 100_000).await;
        reacked += log.matches("the server forgot its ack").count();
        held += log.matches("handing it back until that worker").count();
    }
    let Connection::Nats(nats) = p.connect(Duration::from_secs(10)).await? else {
        anyhow::bail!("{name} is not on NATS");
    };
    let kept = nats.stream_state(DEFAULT_STREAM).await?.messages;
    println!(
        "chaos: {name}: after restarts, {reacked} completed jobs delivered again were acked \
         again without running, {held} deliveries of jobs another worker was settling were \
         handed back; {kept} acked jobs left in the job stream, never delivered again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--max-attempts", "10")];
    under_load(
        "redis-kill",
        Broker::Redis,
        flags,
        (800, 60.0),
        BrokerFault::Kill,
        Vec::new(),
    )
    .await
}

/// Two `--transport nats` workers; nats-server killed three times under load and started again
/// on its JetStream store (streams, consumers, unacked jobs survive; the workers reconnect by
/// themselves, the producer to the new published port). Then 5 jobs that always fail, with
/// `maxAttempts` 3, read back from the `DLQ` stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_and_restarted_under_load() -> anyhow::Result<()> {
    let name = "nats-kill";
    let flags: &[(&str, &str)] = &[("--max-attempts", "10")];
    let poison = (0..5)
        .map(|k| {
            JobSpec::new(
                format!("{name}-fail-{k}"),
                "fail",
                json!({ "maxAttempts": 3 }),
            )
            .expect(Expect::DeadLetter { executions: 3 })
        })
        .collect();
    let kill = BrokerFault::Kill;
    under_load(name, Broker::Nats, flags, (800, 60.0), kill, poison).await
}

/// Longer than the lease: when Redis answers again every lease looks expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_longer_than_the_lease() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--lease", "3s"), ("--max-attempts", "10")];
    let pause = BrokerFault::Pause(Duration::from_secs(5));
    under_load(
        "redis-pause",
        Broker::Redis,
        flags,
        (400, 50.0),
        pause,
        Vec::new(),
    )
    .await
}

/// Shorter than the lease: the cut-off worker keeps its jobs and finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_the_network() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--lease", "10s"), ("--max-attempts", "10")];
    let cut = BrokerFault::CutWorker(Duration::from_secs(4));
    under_load(
        "network-cut",
        Broker::Redis,
        flags,
        (400, 50.0),
        cut,
        Vec::new(),
    )
    .await
}

/// `--transport auto` over Redis and a control plane: Redis, the active transport, is killed
/// under load and comes back 6 s later. The workers fall back to the control plane within the
/// bound, upgrade back once Redis is healthy again, and every Redis job still ends exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_when_redis_dies_and_comes_back() -> anyhow::Result<()> {
    let name = "auto-redis-kill";
    if !gate(name) {
        return Ok(());
    }
    let mut t = Topology::new(name)?;
    t.start_broker(Broker::Redis, BROKER).await?;
    let token = t.start_plane("plane").await?;
    let (broker, plane) = (t.host(BROKER), format!("http://{}:7411", t.host("plane")));
    for w in ["w1", "w2"] {
        let spec = WorkerSpec::redis(w, &broker)
            .arg("--transport", "auto")
            .arg("--nexus-url", &plane)
            .arg("--nexus-token", &token)
            .arg("--fallback-after", "1s")
            .arg("--upgrade-after", "2s")
            .arg("--max-attempts", "10");
        t.start_worker(spec).await?;
    }
    let p = Producer::new(&t.broker_url(BROKER).await?);
    let load = p.spawn(mixed(name, 500), 50.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.kill_broker(BROKER, Duration::from_secs(6)).await?;
    p.set_url(&t.broker_url(BROKER).await?);
    load.await??;
    let figures = finish(name, &mut t, &p, Duration::from_secs(120))
        .await?
        .figures;
    figures.assert_clean(name);
    for w in ["w1", "w2"] {
        let log = t.logs(w, 2000).await;
        let switches: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("transport switch"))
            .collect();
        anyhow::ensure!(
            switches.len() >= 2
                && switches[0].contains("to=nexus")
                && switches.last().is_some_and(|l| l.contains("to=redis")),
            "{w} did not fall back to the control plane and come back: {switches:#?}"
        );
    }
    Ok(())
}
