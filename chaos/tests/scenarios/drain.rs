//! SIGTERM with jobs in flight: short jobs finish and are acked within the drain timeout, long
//! ones are released and delivered again, and the worker exits 0 in time.

use std::time::{Duration, Instant};

use citadel_chaos::{gate, History, JobSpec};

use super::support::{finish, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_jobs() -> anyhow::Result<()> {
    const NAME: &str = "sigterm-drain";
    if !gate(NAME) {
        return Ok(());
    }
    let drain = Duration::from_secs(3);
    let flags: &[(&str, &str)] = &[("--concurrency", "8"), ("--drain-timeout", "3s")];
    let (mut t, p) = setup("drain", &[("w1", flags)]).await?;
    let mut jobs = Vec::new();
    for k in 0..4 {
        jobs.push(JobSpec::sleep(format!("short-{k}"), 1000));
        jobs.push(JobSpec::sleep(format!("long-{k}"), 8000));
    }
    p.send(jobs, 1000.0).await?;
    // Every job is running before the signal.
    let mut conn = p.connect(Duration::from_secs(10)).await?;
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let h = History::read(&mut conn, &p).await?;
        if h.jobs.iter().all(|j| j.starts().count() == 1) {
            break;
        }
        anyhow::ensure!(Instant::now() < until, "the 8 jobs did not all start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signalled = Instant::now();
    t.signal("w1", "SIGTERM").await?;
    let code = t.wait_exit("w1", drain + Duration::from_secs(10)).await?;
    let took = signalled.elapsed();
    println!(
        "chaos: {NAME}: exit code {code} {:.1} s after SIGTERM (drain timeout {drain:?})",
        took.as_secs_f64()
    );
    assert_eq!(code, 0, "the worker must exit 0 after draining");
    assert!(
        took < drain + Duration::from_secs(5),
        "draining took {took:?}"
    );
    let h = History::read(&mut conn, &p).await?;
    for job in &h.jobs {
        let done = job.completed();
        if job.spec.id.starts_with("short-") {
            assert!(
                done,
                "{} should have finished within the drain",
                job.spec.id
            );
        } else {
            assert!(
                !done,
                "{} cannot have finished within the drain",
                job.spec.id
            );
        }
    }
    // The released long jobs are delivered again to the restarted worker and complete.
    t.start("w1").await?;
    let end = finish(NAME, &mut t, &p, Duration::from_secs(60)).await?;
    let (figures, history) = (end.figures, end.history);
    for job in &history.jobs {
        let expected = if job.spec.id.starts_with("long-") {
            2
        } else {
            1
        };
        assert_eq!(
            job.starts().count(),
            expected,
            "executions of {}",
            job.spec.id
        );
    }
    figures.assert_clean(NAME);
    Ok(())
}
