//! Poison jobs among good ones: jobs that kill their worker on every attempt and jobs that
//! always fail reach the dead-letter queue after exactly the allowed attempts (3), and the good
//! jobs around them complete. Handlers that panic (the chaos build's `panic` type) are failed
//! attempts like any other: dead-lettered after exactly their `maxAttempts`, and the worker keeps
//! working.

use std::time::Duration;

use citadel_chaos::producer::mixed;
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
    let figures = finish(NAME, &mut t, &p, Duration::from_secs(120))
        .await?
        .figures;
    println!("chaos: {NAME}: {} worker restarts", t.restarts());
    assert_eq!(figures.dead_lettered, 8, "the 8 poison jobs, and only they");
    figures.assert_clean(NAME);
    Ok(())
}

/// One worker (concurrency 4) and 200 ordinary jobs with 5 jobs whose handler panics on every
/// attempt (`maxAttempts` 3) and 3 that panic once then succeed: each panic is a failed attempt
/// with its `error` event, the always-panicking jobs are dead-lettered after exactly 3 attempts
/// (by the events and by the worker's journal), the others complete on their second, and every
/// ordinary job completes on the same worker: a panic wedges nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_panics_are_failed_attempts() -> anyhow::Result<()> {
    const NAME: &str = "handler-panic";
    if !gate(NAME) {
        return Ok(());
    }
    let flags: &[(&str, &str)] = &[("--max-attempts", "10"), ("--concurrency", "4")];
    let (mut t, p) = setup("panic", &[("w1", flags)]).await?;
    let mut jobs = mixed("ok", 200);
    for k in 0..5 {
        let always = JobSpec::new(format!("panic-{k}"), "panic", json!({ "maxAttempts": 3 }))
            .expect(Expect::DeadLetter { executions: 3 });
        jobs.insert(10 + k * 35, always);
    }
    for k in 0..3 {
        let once = JobSpec::new(format!("panic-once-{k}"), "panic", json!({ "times": 1 }));
        jobs.insert(25 + k * 50, once);
    }
    p.send(jobs, 40.0).await?;
    let end = finish(NAME, &mut t, &p, Duration::from_secs(120)).await?;
    let mut figures = end.figures;
    let starts = end.journals.starts();
    for job in end
        .history
        .jobs
        .iter()
        .filter(|j| j.spec.job_type == "panic")
    {
        let id = &job.spec.id;
        // (starts, failed attempts): panic-once fails its first attempt and succeeds.
        let (runs, panics) = if id.starts_with("panic-once-") {
            (2, 1)
        } else {
            (3, 3)
        };
        let journaled = starts.get(id.as_str()).map_or(0, Vec::len);
        let errors = job.events.iter().filter(|e| e.kind == "error").count();
        if (job.starts().count(), journaled, errors) != (runs, runs, panics) {
            figures.add_violation(format!(
                "{id}: {} starts, {journaled} attempts journaled, {errors} error events; \
                 {runs}, {runs} and {panics} expected",
                job.starts().count()
            ));
        }
        if let Some(dead) = job.dead.first() {
            let reason = dead.get("reason").map_or("", String::as_str);
            if !reason.contains("panic") {
                figures.add_violation(format!("{id} was dead-lettered for `{reason}`"));
            }
        }
    }
    assert_eq!(
        figures.dead_lettered, 5,
        "the 5 always-panicking jobs, and only they"
    );
    figures.assert_clean(NAME);
    Ok(())
}
