//! Poison jobs among good ones: jobs that kill their worker on every attempt and jobs that
//! always fail reach the dead-letter queue after exactly the allowed attempts (3), and the good
//! jobs around them complete.

use std::time::Duration;

use citadel_chaos::{gate, Expect, JobSpec};
use serde_json::json;

use super::support::{finish, setup};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_jobs_are_dead_lettered() -> anyhow::Result<()> {
    const NAME: &str = "poison-jobs";
    if !gate(NAME) {
        return Ok(());
    }
    let flags: &[(&str, &str)] = &[("--max-attempts", "3")];
    let (mut t, p) = setup("poison", &[("w1", flags), ("w2", flags)]).await?;
    t.supervise();
    let poison = Expect::DeadLetter { executions: 3 };
    let mut jobs: Vec<JobSpec> = (0..300)
        .map(|i| match i % 3 {
            0 => JobSpec::new(format!("good-{i}"), "noop", json!({})),
            _ => JobSpec::sleep(format!("good-{i}"), fastrand::u64(10..=50)),
        })
        .collect();
    for k in 0..3 {
        let crash = JobSpec::sleep(format!("crash-{k}"), 400)
            .kill_at("mid_handler", 0)
            .expect(poison);
        jobs.insert(40 + k * 80, crash);
    }
    for k in 0..5 {
        let fail = JobSpec::new(format!("fail-{k}"), "fail", json!({})).expect(poison);
        jobs.insert(30 + k * 50, fail);
    }
    p.send(jobs, 40.0).await?;
    let (figures, _) = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    println!("chaos: {NAME}: {} worker restarts", t.restarts());
    assert_eq!(figures.dead_lettered, 8, "the 8 poison jobs, and only they");
    figures.assert_clean(NAME);
    Ok(())
}
