//! SIGKILL of workers: repeatedly under load with a second worker running, and at each lifecycle
//! point through the chaos build's crash points. A killed worker is restarted as the same
//! container (same journal, same consumer) by the topology's supervisor.

use std::time::Duration;

use citadel_chaos::producer::mixed;
use citadel_chaos::{gate, JobSpec};

use super::support::{finish, setup};

/// At least 10 kills of `w1` over 2,000 mixed jobs while `w2` keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_worker_under_load() -> anyhow::Result<()> {
    const NAME: &str = "sigkill-under-load";
    if !gate(NAME) {
        return Ok(());
    }
    // Interrupted attempts count (docs/journal.md#invariants): a job killed often must not hit the default 3.
    let flags: &[(&str, &str)] = &[("--concurrency", "8"), ("--max-attempts", "20")];
    let (mut t, p) = setup("kill", &[("w1", flags), ("w2", flags)]).await?;
    t.supervise();
    let load = p.spawn(mixed("kill", 2000), 160.0);
    let mut kills = 0;
    while !load.is_finished() || kills < 10 {
        tokio::time::sleep(Duration::from_millis(1100)).await;
        t.signal("w1", "SIGKILL").await?;
        kills += 1;
    }
    load.await??;
    let figures = finish(NAME, &mut t, &p, Duration::from_secs(120))
        .await?
        .figures;
    println!("chaos: {NAME}: {kills} kills, {} restarts", t.restarts());
    assert!(t.restarts() >= 10, "only {} restarts", t.restarts());
    assert!(figures.sent >= 2000);
    figures.assert_clean(NAME);
    Ok(())
}

/// The chaos build's crash points, in lifecycle order.
const POINTS: [&str; 5] = [
    "after_claim",
    "after_journal",
    "mid_handler",
    "after_result",
    "before_ack",
];

/// Four jobs per lifecycle point kill their worker once, among 300 ordinary jobs, on two
/// workers; every job completes, and a job killed before its ack (its success durable in the
/// killed worker's journal, its `end` published) runs exactly once across both nodes: a killed
/// worker stays down 4 s, twice the lease, so the other worker takes the unacked entry over
/// while it is away, and must then acknowledge it without running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_each_lifecycle_point() -> anyhow::Result<()> {
    const NAME: &str = "sigkill-lifecycle-points";
    if !gate(NAME) {
        return Ok(());
    }
    // Twenty crashes hit the two workers, and an ordinary job in flight at each of them (a
    // worker takes its pending jobs back first after a restart) can be interrupted every time:
    // it must not be taken for a poison job. More attempts than kills (a full run dead-lettered a job
    // delivered 11 times with 10 allowed).
    let flags: &[(&str, &str)] = &[("--max-attempts", "30"), ("--lease", "2s")];
    let (mut t, p) = setup("points", &[("w1", flags), ("w2", flags)]).await?;
    t.supervise_after(Duration::from_secs(4));
    let mut jobs = mixed("points", 300);
    for (i, point) in POINTS.iter().enumerate() {
        for k in 0..4 {
            let at = 20 + i * 60 + k * 15;
            jobs.insert(
                at,
                JobSpec::sleep(format!("{point}-{k}"), 200).kill_at(point, 1),
            );
        }
    }
    p.send(jobs, 30.0).await?;
    let end = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    let (figures, history) = (end.figures, end.history);
    let successes = end.journals.successes();
    let mut logs = String::new();
    for w in t.worker_names() {
        logs.push_str(&t.logs(&w, 100_000).await);
    }
    for point in POINTS {
        let kills = logs
            .matches(&format!("killing the worker at {point} "))
            .count();
        println!("chaos: {NAME}: {kills} kills at {point}");
        assert!(kills >= 1, "no worker was killed at {point}");
    }
    // Only the jobs really killed at `before_ack` (another job's crash can interrupt one earlier,
    // before its success: then it rightly runs again).
    for job in history.jobs.iter().filter(|j| {
        j.spec.id.starts_with("before_ack-")
            && logs.contains(&format!(
                "killing the worker at before_ack of job {} ",
                j.spec.id
            ))
    }) {
        let id = &job.spec.id;
        let succeeded = successes.get(id.as_str()).cloned().unwrap_or_default();
        println!(
            "chaos: {NAME}: {id} killed at before_ack: {} start(s), succeeded on {succeeded:?}",
            job.starts().count()
        );
        assert_eq!(
            (job.starts().count(), succeeded.len()),
            (1, 1),
            "{id} was killed after its success was journaled and must not run again (starts, \
             successes in the journals)"
        );
    }
    figures.assert_clean(NAME);
    Ok(())
}
