//! Effectively-once across a fleet of Redis workers, where one node's journal cannot know what
//! another did: a worker cut off from Redis for twice the lease while its shell jobs run
//! (partition-over-lease), every job enqueued twice with the same `jobId` (duplicate-enqueue),
//! and Redis with `appendfsync everysec` losing its last second of writes under load, forgetting
//! acks it had answered (redis-lost-acks). Side effects are counted on the host ([`Effects`]), successes across the
//! merged journals of both workers (`finish`).

use std::time::{Duration, Instant, SystemTime};

use citadel_chaos::producer::mixed;
use citadel_chaos::{gate, Broker, Effects, History, JobSpec, Producer, Topology, WorkerSpec};

use super::support::{finish, finish_counting, spec, BROKER};

/// The lease of partition-over-lease; the cut lasts twice as long.
const LEASE: Duration = Duration::from_secs(3);
/// How long its long shell jobs sleep before their side effect.
const LONG_JOB: Duration = Duration::from_secs(10);

/// `w1` takes 4 shell jobs that sleep 10 s and then append their id to a file on a host folder;
/// `w2` joins; `w1` is cut off the network for 2 × the 3 s lease, placed so that the commands
/// would end during the cut, after the lease ran out: a worker that does not fence itself lets
/// them finish there while `w2` takes them over and runs them again (two lines). Then 20 short
/// shell jobs go to both workers. Every job's line must appear exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_longer_than_the_lease() -> anyhow::Result<()> {
    const NAME: &str = "partition-over-lease";
    if !gate(NAME) {
        return Ok(());
    }
    let mut t = Topology::new("partition")?;
    t.start_broker(Broker::Redis, BROKER).await?;
    let effects = Effects::new(&t)?;
    let lease = format!("{}s", LEASE.as_secs());
    let flags: &[(&str, &str)] = &[("--lease", lease.as_str()), ("--max-attempts", "10")];
    let worker = |name: &str| effects.worker(spec(WorkerSpec::redis(name, &t.host(BROKER)), flags));
    let (w1, w2) = (worker("w1"), worker("w2"));
    t.start_worker(w1).await?;
    let p = Producer::new(&t.broker_url(BROKER).await?);
    let long: Vec<JobSpec> = (0..4)
        .map(|k| Effects::job(format!("long-{k}"), LONG_JOB.as_secs_f64()))
        .collect();
    p.send(long, 100.0).await?;
    let started = all_started(&p, "w1").await?;
    t.start_worker(w2).await?;
    // The commands end LONG_JOB after their start: cut so that this is 1.5 leases into the cut,
    // past the lease (a fenced worker has killed them) and before the reconnection.
    let cut_at = started + LONG_JOB - LEASE - LEASE / 2;
    let wait = cut_at.duration_since(SystemTime::now()).unwrap_or_default();
    anyhow::ensure!(
        SystemTime::now() < cut_at + Duration::from_secs(1),
        "w2 took too long to start: the cut would begin after the commands could end"
    );
    tokio::time::sleep(wait).await;
    t.cut_network("w1", 2 * LEASE).await?;
    let short = (0..20)
        .map(|k| Effects::job(format!("short-{k}"), 0.2))
        .collect();
    p.send(short, 10.0).await?;
    let end = finish_counting(NAME, &mut t, &p, Duration::from_secs(120), Some(&effects)).await?;
    end.figures.assert_clean(NAME);
    Ok(())
}

/// Waits until every job sent has a `start` from `node`; returns the latest start's time.
async fn all_started(p: &Producer, node: &str) -> anyhow::Result<SystemTime> {
    let mut conn = p.connect(Duration::from_secs(10)).await?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let h = History::read(&mut conn, p).await?;
        let starts: Vec<SystemTime> = h
            .jobs
            .iter()
            .filter_map(|j| j.starts().find(|s| s.node == node).map(|s| s.at))
            .collect();
        if starts.len() == h.jobs.len() {
            return Ok(starts.into_iter().max().unwrap_or_else(SystemTime::now));
        }
        anyhow::ensure!(
            Instant::now() < until,
            "only {} of {} jobs started on {node}",
            starts.len(),
            h.jobs.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 60 shell jobs, each enqueued twice in a row with the same `jobId` (a producer whose retried
/// `XADD` stored it twice), on two workers of concurrency 4: the two copies arrive together,
/// on one node or on both. Each job's side effect happens once, it succeeds once across both
/// journals, no journal leaves it running and nothing stays pending in the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_enqueued_twice() -> anyhow::Result<()> {
    const NAME: &str = "duplicate-enqueue";
    if !gate(NAME) {
        return Ok(());
    }
    let mut t = Topology::new("dupes")?;
    t.start_broker(Broker::Redis, BROKER).await?;
    let effects = Effects::new(&t)?;
    let flags: &[(&str, &str)] = &[("--lease", "3s"), ("--concurrency", "4")];
    for name in ["w1", "w2"] {
        let w = effects.worker(spec(WorkerSpec::redis(name, &t.host(BROKER)), flags));
        t.start_worker(w).await?;
    }
    let p = Producer::new(&t.broker_url(BROKER).await?);
    let jobs = (0..60)
        .map(|k| Effects::job(format!("twice-{k}"), if k % 2 == 0 { 0.0 } else { 0.3 }).copies(2))
        .collect();
    p.send(jobs, 20.0).await?;
    let end = finish_counting(NAME, &mut t, &p, Duration::from_secs(90), Some(&effects)).await?;
    let starts = end.journals.starts();
    let attempts: usize = starts.values().map(Vec::len).sum();
    println!(
        "chaos: {NAME}: {attempts} attempts journaled for {} jobs ({} entries)",
        end.history.jobs.len(),
        2 * end.history.jobs.len()
    );
    end.figures.assert_clean(NAME);
    Ok(())
}

/// Two workers; 1,000 mixed jobs enqueued first; then, while the workers work through them,
/// Redis (`appendfsync everysec`) loses its last second of writes 3 times, 2 s apart: SIGKILLed
/// with its AOF cut back to its size of a second before (what a power cut leaves of an
/// everysec AOF, or a failover to a lagging replica; a process kill alone loses nothing),
/// restarted on it 1 s later. It forgets the acks, claims, events and status of that second
/// (never the jobs, all enqueued before). Merging both workers' journals, no job may have
/// succeeded on two nodes (or twice on one), and every obligation holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_forgets_acks_under_load() -> anyhow::Result<()> {
    const NAME: &str = "redis-lost-acks";
    if !gate(NAME) {
        return Ok(());
    }
    let mut t = Topology::new("lostacks")?;
    t.start_broker_with(Broker::Redis, BROKER, &["--appendfsync", "everysec"])
        .await?;
    let flags: &[(&str, &str)] = &[("--lease", "3s"), ("--max-attempts", "10")];
    for name in ["w1", "w2"] {
        t.start_worker(spec(WorkerSpec::redis(name, &t.host(BROKER)), flags))
            .await?;
    }
    let p = Producer::new(&t.broker_url(BROKER).await?);
    p.send(mixed("lostacks", 1000), 400.0).await?;
    let mut cut = 0;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let second = Duration::from_secs(1);
        cut += t.kill_broker_losing(BROKER, second, second).await?;
        p.set_url(&t.broker_url(BROKER).await?);
    }
    let end = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    let acked = end.journals.by_job("acked");
    let again = acked.values().filter(|nodes| nodes.len() > 1).count();
    println!(
        "chaos: {NAME}: {cut} bytes of AOF lost; {again} jobs acked more than once (their ack \
         was forgotten)"
    );
    end.figures.assert_clean(NAME);
    Ok(())
}
