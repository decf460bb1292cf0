//! Broker faults under load: Redis killed and restarted, Redis paused for longer than the
//! lease, a worker cut off the network and reconnected, and Redis killed under workers on
//! `--transport auto` (they fall back to a control plane and come back). Each is [`under_load`] with one
//! [`BrokerFault`]; the NATS and `auto` scenarios plug in the same way (a topology with the
//! brokers they need, a fault, the same check).

use std::time::Duration;

use citadel_chaos::gate;
use citadel_chaos::producer::mixed;

use citadel_chaos::{Producer, Topology, WorkerSpec};

use super::support::{finish, setup, BROKER};

/// What is done to the system while the load runs.
enum BrokerFault {
    /// SIGKILL Redis three times, 3 s apart, each time down for a second.
    KillRedis,
    /// `docker pause` Redis this long.
    PauseRedis(Duration),
    /// Disconnect worker `w1` from the network this long.
    CutWorker(Duration),
}

/// Two workers with `flags`, `jobs` mixed jobs at `rate` per second, `fault` 2–3 s in; every
/// obligation must hold.
async fn under_load(
    name: &str,
    flags: &[(&str, &str)],
    jobs: usize,
    rate: f64,
    fault: BrokerFault,
) -> anyhow::Result<()> {
    if !gate(name) {
        return Ok(());
    }
    let (mut t, p) = setup(name, &[("w1", flags), ("w2", flags)]).await?;
    let load = p.spawn(mixed(name, jobs), rate);
    match fault {
        BrokerFault::KillRedis => {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(3)).await;
                t.kill_broker(BROKER, Duration::from_secs(1)).await?;
                p.set_url(&t.redis_url(BROKER).await?);
            }
        }
        BrokerFault::PauseRedis(pause) => {
            tokio::time::sleep(Duration::from_secs(3)).await;
            t.pause(BROKER, pause).await?;
        }
        BrokerFault::CutWorker(cut) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            t.cut_network("w1", cut).await?;
        }
    }
    load.await??;
    let (figures, _) = finish(name, &mut t, &p, Duration::from_secs(120)).await?;
    figures.assert_clean(name);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--max-attempts", "10")];
    under_load("redis-kill", flags, 800, 60.0, BrokerFault::KillRedis).await
}

/// Longer than the lease: when Redis answers again every lease looks expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_longer_than_the_lease() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--lease", "3s"), ("--max-attempts", "10")];
    let pause = BrokerFault::PauseRedis(Duration::from_secs(5));
    under_load("redis-pause", flags, 400, 50.0, pause).await
}

/// Shorter than the lease: the cut-off worker keeps its jobs and finishes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_the_network() -> anyhow::Result<()> {
    let flags: &[(&str, &str)] = &[("--lease", "10s"), ("--max-attempts", "10")];
    let cut = BrokerFault::CutWorker(Duration::from_secs(4));
    under_load("network-cut", flags, 400, 50.0, cut).await
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
    t.start_redis(BROKER).await?;
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
    let p = Producer::new(&t.redis_url(BROKER).await?);
    let load = p.spawn(mixed(name, 500), 50.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.kill_broker(BROKER, Duration::from_secs(6)).await?;
    p.set_url(&t.redis_url(BROKER).await?);
    load.await??;
    let (figures, _) = finish(name, &mut t, &p, Duration::from_secs(120)).await?;
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
