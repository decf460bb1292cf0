//! Broker faults under load: Redis killed and restarted, Redis paused for longer than the
//! lease, a worker cut off the network and reconnected. The NATS and `auto` scenarios plug in
//! here the same way: a topology with the brokers they need, a fault, the same check.

use std::time::Duration;

use citadel_chaos::gate;
use citadel_chaos::producer::mixed;

use super::support::{finish, setup, BROKER};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load() -> anyhow::Result<()> {
    const NAME: &str = "redis-kill-restart";
    if !gate(NAME) {
        return Ok(());
    }
    let flags: &[(&str, &str)] = &[("--max-attempts", "10")];
    let (mut t, p) = setup("rkill", &[("w1", flags), ("w2", flags)]).await?;
    let load = p.spawn(mixed("rkill", 800), 60.0);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(3)).await;
        t.kill_broker(BROKER, Duration::from_secs(1)).await?;
        p.set_url(&t.redis_url(BROKER).await?);
    }
    load.await??;
    let (figures, _) = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    figures.assert_clean(NAME);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_longer_than_the_lease() -> anyhow::Result<()> {
    const NAME: &str = "redis-pause";
    if !gate(NAME) {
        return Ok(());
    }
    let flags: &[(&str, &str)] = &[("--lease", "3s"), ("--max-attempts", "10")];
    let (mut t, p) = setup("rpause", &[("w1", flags), ("w2", flags)]).await?;
    let load = p.spawn(mixed("rpause", 400), 50.0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    t.pause(BROKER, Duration::from_secs(5)).await?;
    load.await??;
    let (figures, _) = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    figures.assert_clean(NAME);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_cut_off_the_network() -> anyhow::Result<()> {
    const NAME: &str = "network-cut";
    if !gate(NAME) {
        return Ok(());
    }
    let flags: &[(&str, &str)] = &[("--lease", "10s"), ("--max-attempts", "10")];
    let (mut t, p) = setup("netcut", &[("w1", flags), ("w2", flags)]).await?;
    let load = p.spawn(mixed("netcut", 400), 50.0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    t.cut_network("w1", Duration::from_secs(4)).await?;
    load.await??;
    let (figures, _) = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    figures.assert_clean(NAME);
    Ok(())
}
