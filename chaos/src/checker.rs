//! The obligations of docs/chaos.md, checked over a whole [`History`], and the figures every scenario
//! prints. Pure: it reads a history and the faults, never a broker or a container.
//!
//! What counts:
//! - an **execution** is a `start` event: the runtime publishes it right before the handler runs;
//! - a **journaled success** is an `end` event: the runtime publishes `end` only after the
//!   settlement that follows the success is durable in the worker's journal (src/runner/settle.rs,
//!   `settle_announcing`), so the first `end` of a job proves its success was journaled;
//! - a **duplicated execution** is a `start` whose timestamp is later than that first `end` (by
//!   the event timestamps, which all come from the one host clock the containers share): the
//!   job ran again although a journal already held its success. A re-published `end` (a
//!   redelivery acked from the journal) carries no `start` and is no execution. When the
//!   workers' journals were read ([`Journals`]), every `succeeded` attempt beyond a job's first,
//!   in any journal, is a duplicate too (a success on two nodes, which events cannot show when
//!   the second run's `start` was lost); a job counts the larger of the two;
//! - **lost**: sent, but neither completed (`end`) nor dead-lettered when the scenario's time is
//!   up; the broker must also hold no unsettled job (Redis: no pending entry in the group;
//!   NATS: nothing the workers' consumer has still to deliver or to see acked; when it holds
//!   some, the violation names its sequences and counts, the sequences after its ack floor
//!   gone from the stream and each job the stream still holds there, with what the workers'
//!   journals say of it);
//! - **stuck**: the broker's unsettled jobs, plus every job a worker's journal left `running`
//!   (an attempt started and never ended) at the end;
//! - **one terminal state**: never both completed and dead-lettered, never two dead letters;
//!   a job meant to complete is never dead-lettered;
//! - **poison**: a job expected to be dead-lettered after N executions has one dead letter and
//!   at most N `start`s; fewer only by as many as the workers that died while it was unsettled
//!   (a fault began, or a job that kills its worker started: [`deaths_during`]). Attempts are
//!   counted from the broker's delivery count and the journal, whichever is higher, so a
//!   delivery claimed by a worker that died before it started the job uses an attempt: a scenario
//!   whose workers die can dead-letter a poison job after fewer executions;
//! - **time to recover** of a fault: the longest time, after the fault was over, until a job that
//!   was in flight when it began (started, no `end` yet) completed.
//!
//! A `start` published into a worker's event queue can be lost with the worker when it is killed
//! in the millisecond before the queue is flushed: executions can be undercounted, never
//! invented.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use citadel_transports::nats::UnsettledReport;

use crate::history::History;
use crate::journals::Journals;
use crate::producer::Expect;
use crate::topology::Fault;

/// The figures of one scenario.
#[derive(Debug, Clone, Default)]
pub struct Figures {
    pub sent: usize,
    pub completed: usize,
    pub dead_lettered: usize,
    /// `start` events in all.
    pub executions: usize,
    /// Executions beyond the first of each job (interrupted attempts, retries of poison jobs).
    pub reexecuted: usize,
    /// Executions after a journaled success, by the events, across the journals or by a
    /// scenario's side effects (must be 0): the sum of [`Figures::duplicated_by_job`].
    pub duplicated: usize,
    /// Each duplicated job's count: the largest any evidence shows.
    pub duplicated_by_job: HashMap<String, usize>,
    /// Jobs with no terminal state (must be 0).
    pub lost: usize,
    /// Jobs the broker still holds unsettled (must be 0).
    pub pending: u64,
    /// `pending` plus the jobs left `running` in a worker's journal (must be 0).
    pub stuck: usize,
    /// How many workers' journals were read (0: the journal checks did not run).
    pub journals: usize,
    pub faults: usize,
    pub longest_recovery: Option<Duration>,
    /// Every broken obligation, one line each.
    pub violations: Vec<String>,
}

/// Checks `history` and the workers' `journals` (empty: not read) against the obligations;
/// `faults` give the recovery times.
pub fn check(history: &History, faults: &[Fault], journals: &Journals) -> Figures {
    let mut f = Figures {
        sent: history.jobs.len(),
        pending: history.pending,
        faults: faults.len(),
        journals: journals.nodes.len(),
        ..Figures::default()
    };
    let successes = journals.successes();
    for job in &history.jobs {
        let id = &job.spec.id;
        let starts = job.starts().count();
        f.executions += starts;
        f.reexecuted += starts.saturating_sub(1);
        if job.completed() {
            f.completed += 1;
        }
        if job.dead_lettered() {
            f.dead_lettered += 1;
        }
        if !job.terminal() {
            f.lost += 1;
            violate(
                &mut f,
                format!(
                    "lost: {id} has no terminal state ({} events)",
                    job.events.len()
                ),
            );
        }
        if job.completed() && job.dead_lettered() {
            violate(&mut f, format!("{id} is both completed and dead-lettered"));
        }
        if job.dead.len() > 1 {
            violate(
                &mut f,
                format!("{id} was dead-lettered {} times", job.dead.len()),
            );
        }
        let mut dups = 0;
        if let Some(first_end) = job.events.iter().find(|e| e.kind == "end") {
            dups = job.starts().filter(|s| s.at > first_end.at).count();
            if dups > 0 {
                violate(&mut f, format!(
                    "duplicated: {id} started {dups} time(s) after its success was journaled (end from {} at {})",
                    first_end.node,
                    humantime::format_rfc3339_millis(first_end.at)
                ));
            }
        }
        if let Some(nodes) = successes.get(id.as_str()).filter(|n| n.len() > 1) {
            dups = dups.max(nodes.len() - 1);
            violate(
                &mut f,
                format!(
                    "duplicated: {id} succeeded {} times in the workers' journals (on {})",
                    nodes.len(),
                    nodes.join(", ")
                ),
            );
        }
        f.raise_duplicated(id, dups);
        match job.spec.expect {
            Expect::Complete if job.dead_lettered() => violate(
                &mut f,
                format!(
                    "{id} should have completed but was dead-lettered: {}",
                    job.dead[0].get("reason").map_or("", String::as_str)
                ),
            ),
            Expect::DeadLetter { executions } => {
                if !job.dead_lettered() {
                    violate(&mut f, format!("poison {id} was not dead-lettered"));
                }
                let allowed = executions as usize;
                let deaths = deaths_during(history, faults, job);
                if starts > allowed || starts + deaths < allowed {
                    violate(
                        &mut f,
                        format!(
                            "poison {id} ran {starts} times; {executions} attempts were allowed ({deaths} workers died while it was unsettled)"
                        ),
                    );
                }
            }
            Expect::Complete => {}
        }
    }
    if f.pending > 0 {
        let mut line = format!("{} jobs are still unsettled on the broker", f.pending);
        if let Some(report) = &history.unsettled {
            line += &explain(report, journals);
        }
        violate(&mut f, line);
    }
    f.stuck = usize::try_from(f.pending).unwrap_or(usize::MAX);
    let sent: std::collections::HashSet<&str> =
        history.jobs.iter().map(|j| j.spec.id.as_str()).collect();
    for (node, id) in journals.running() {
        if sent.contains(id) {
            f.stuck += 1;
            violate(
                &mut f,
                format!("stuck: {id} is left running in {node}'s journal"),
            );
        }
    }
    f.longest_recovery = faults
        .iter()
        .filter_map(|fault| recovery(history, fault))
        .max();
    f
}

/// What the broker's report of its unsettled jobs shows: its figures, the sequences after the
/// ack floor that are gone from the stream, and each one it still holds with what the workers'
/// journals say of that job.
fn explain(report: &UnsettledReport, journals: &Journals) -> String {
    let gone: Vec<u64> = report
        .after_floor
        .iter()
        .filter(|(_, job)| job.is_none())
        .map(|(seq, _)| *seq)
        .collect();
    let mut out = format!(
        " ({report}; after the ack floor, {} sequences gone from the stream",
        gone.len()
    );
    if !gone.is_empty() {
        let first: Vec<String> = gone.iter().take(10).map(u64::to_string).collect();
        out += &format!(" (first: {})", first.join(", "));
    }
    for (seq, job) in &report.after_floor {
        if let Some(id) = job {
            out += &format!(
                "; seq {seq} held: job {id}, journals: {}",
                story(journals, id)
            );
        }
    }
    out + ")"
}

/// What each worker's journal holds of job `id`, in order (`w1: received started succeeded
/// acked`), or that none names it.
fn story(journals: &Journals, id: &str) -> String {
    let mut parts = Vec::new();
    for n in &journals.nodes {
        let kinds: Vec<&str> = n
            .entries
            .iter()
            .filter(|e| e.job == id)
            .map(|e| e.kind.as_str())
            .collect();
        if !kinds.is_empty() {
            parts.push(format!("{}: {}", n.node, kinds.join(" ")));
        }
    }
    if parts.is_empty() {
        return "none names it".into();
    }
    parts.join(", ")
}

/// How many workers died between `job`'s enqueue and its last event: the faults that began
/// then, and the `start`s then of jobs that kill their worker (`chaos_kill_at`; each counts,
/// whatever attempts it kills at).
fn deaths_during(history: &History, faults: &[Fault], job: &crate::history::JobHistory) -> usize {
    let Some(last) = job.events.iter().map(|e| e.at).max() else {
        return 0;
    };
    let during = |at: SystemTime| at >= job.sent && at <= last;
    let killed = faults.iter().filter(|fault| during(fault.from)).count();
    let crashed = history
        .jobs
        .iter()
        .filter(|j| j.spec.payload.get("chaos_kill_at").is_some())
        .flat_map(|j| j.starts())
        .filter(|start| during(start.at))
        .count();
    killed + crashed
}

/// Records a broken obligation (the first 20 are kept).
fn violate(f: &mut Figures, line: String) {
    if f.violations.len() < 20 {
        f.violations.push(line);
    }
}

/// How long after `fault` was over the system took to recover: the later of (a) the last
/// completion of a job that was in flight when the fault began and (b) the first start of a job
/// that was waiting when the fault ended (work flows again).
fn recovery(history: &History, fault: &Fault) -> Option<Duration> {
    let since_end = |t: SystemTime| t.duration_since(fault.to).unwrap_or_default();
    let in_flight = history
        .jobs
        .iter()
        .filter_map(|job| {
            let started = job.starts().any(|s| s.at < fault.from);
            let ended_before = job
                .events
                .iter()
                .any(|e| e.kind == "end" && e.at < fault.from);
            if !started || ended_before {
                return None;
            }
            let end = job
                .events
                .iter()
                .find(|e| e.kind == "end" && e.at >= fault.from)?;
            Some(since_end(end.at))
        })
        .max()
        .unwrap_or_default();
    let resumed = history
        .jobs
        .iter()
        .filter(|job| job.sent < fault.to)
        .filter_map(|job| job.starts().next())
        .filter(|first| first.at >= fault.to)
        .map(|first| since_end(first.at))
        .min()
        .unwrap_or_default();
    Some(in_flight.max(resumed))
}

impl Figures {
    /// Job `id` ran `n` times more than once by some evidence (a side effect seen twice): its
    /// count becomes the larger of what was known and `n`.
    pub fn raise_duplicated(&mut self, id: &str, n: usize) {
        if n == 0 {
            return;
        }
        let known = self.duplicated_by_job.entry(id.to_owned()).or_default();
        if n > *known {
            self.duplicated += n - *known;
            *known = n;
        }
    }

    /// Adds a broken obligation a scenario checked itself (its side effects, its journals).
    pub fn add_violation(&mut self, line: String) {
        violate(self, line);
    }

    /// One line of figures, printed by every scenario (and appended to the file named by
    /// `CITADEL_CHAOS_FIGURES`, a Markdown table docs/chaos.md quotes).
    pub fn report(&self, scenario: &str) {
        let recovery = self
            .longest_recovery
            .map_or("-".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
        println!(
            "chaos figures: {scenario}: sent {} completed {} dead-lettered {} executions {} \
             re-executed {} duplicated {} lost {} pending {} stuck {} faults {} longest recovery \
             {recovery} ({} journals read)",
            self.sent,
            self.completed,
            self.dead_lettered,
            self.executions,
            self.reexecuted,
            self.duplicated,
            self.lost,
            self.pending,
            self.stuck,
            self.faults,
            self.journals
        );
        for v in &self.violations {
            println!("chaos violation: {scenario}: {v}");
        }
        if let Ok(path) = std::env::var("CITADEL_CHAOS_FIGURES") {
            use std::io::Write;
            if let Ok(mut file) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(
                    file,
                    "| {scenario} | {} | {} | {} | {} | {} | {} | {} | {} | {recovery} |",
                    self.sent,
                    self.completed,
                    self.dead_lettered,
                    self.reexecuted,
                    self.duplicated,
                    self.lost,
                    self.stuck,
                    self.faults
                );
            }
        }
    }

    /// Panics with every violation when an obligation is broken.
    pub fn assert_clean(&self, scenario: &str) {
        assert!(
            self.violations.is_empty(),
            "chaos scenario {scenario} broke its obligations:\n{}",
            self.violations.join("\n")
        );
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::history::{Event, JobHistory};
    use crate::producer::JobSpec;

    fn ev(kind: &str, at_ms: u64) -> Event {
        Event {
            kind: kind.to_owned(),
            at: SystemTime::UNIX_EPOCH + Duration::from_millis(at_ms),
            node: "w1".to_owned(),
            data: json!({}),
        }
    }

    fn job(id: &str, events: Vec<Event>) -> JobHistory {
        JobHistory {
            spec: JobSpec::new(id, "noop", json!({})),
            sent: SystemTime::UNIX_EPOCH,
            events,
            dead: Vec::new(),
        }
    }

    #[test]
    fn counts_duplicates_losses_and_poison() {
        let redelivered_from_journal =
            job("ok", vec![ev("start", 10), ev("end", 20), ev("end", 900)]);
        let interrupted = job(
            "again",
            vec![ev("start", 10), ev("start", 500), ev("end", 600)],
        );
        let ran_twice = job("dup", vec![ev("start", 10), ev("end", 20), ev("start", 30)]);
        let lost = job("lost", vec![ev("claimed", 5), ev("start", 10)]);
        let mut poison = job("poison", vec![ev("start", 1), ev("start", 2)]);
        poison.spec.expect = Expect::DeadLetter { executions: 3 };
        poison
            .dead
            .push([("reason".to_owned(), "x".to_owned())].into());
        let history = History {
            unsettled: None,
            jobs: vec![
                redelivered_from_journal,
                interrupted,
                ran_twice,
                lost,
                poison,
            ],
            pending: 0,
        };
        let f = check(&history, &[], &Journals::default());
        assert_eq!((f.sent, f.completed, f.dead_lettered), (5, 3, 1));
        assert_eq!(
            (f.executions, f.reexecuted, f.duplicated, f.lost),
            (8, 3, 1, 1)
        );
        assert_eq!(f.violations.len(), 3, "{:?}", f.violations);
        assert!(f
            .violations
            .iter()
            .any(|v| v.contains("poison poison ran 2 times")));
    }

    /// A poison job that ran twice of three: allowed when a worker died while it waited (its
    /// delivery used an attempt), not otherwise.
    #[test]
    fn poison_may_run_less_by_the_workers_that_died_meanwhile() {
        let mut poison = job("p", vec![ev("start", 100), ev("start", 300)]);
        poison.spec.expect = Expect::DeadLetter { executions: 3 };
        poison
            .dead
            .push([("reason".to_owned(), "x".to_owned())].into());
        let crash_at = |ms| {
            let mut crash = job("crash", vec![ev("start", ms), ev("start", ms + 50)]);
            crash.spec.payload = json!({"chaos_kill_at": "mid_handler"});
            crash.spec.expect = Expect::DeadLetter { executions: 2 };
            crash
                .dead
                .push([("reason".to_owned(), "x".to_owned())].into());
            crash
        };
        let with_crash = |ms| History {
            unsettled: None,
            jobs: vec![poison.clone(), crash_at(ms)],
            pending: 0,
        };
        let f = check(&with_crash(200), &[], &Journals::default());
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        let f = check(&with_crash(5_000), &[], &Journals::default());
        assert_eq!(f.violations.len(), 1, "{:?}", f.violations);
        assert!(f.violations[0]
            .contains("poison p ran 2 times; 3 attempts were allowed (0 workers died"));
    }

    #[test]
    fn recovery_runs_from_the_end_of_the_fault() {
        let history = History {
            unsettled: None,
            jobs: vec![job("a", vec![ev("start", 100), ev("end", 5_000)])],
            pending: 0,
        };
        let at = |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        let fault = Fault {
            what: "w1 died".into(),
            from: at(200),
            to: at(1_000),
        };
        let f = check(&history, &[fault], &Journals::default());
        assert_eq!(f.longest_recovery, Some(Duration::from_secs(4)));
        assert!(f.violations.is_empty());
    }

    /// A success on two nodes whose second `start` never reached the broker, and a job left
    /// running in a journal: the events alone look clean.
    #[test]
    fn counts_duplicates_across_journals_and_stuck_jobs() {
        let history = History {
            unsettled: None,
            jobs: vec![
                job("twice", vec![ev("start", 10), ev("end", 20)]),
                job("once", vec![ev("start", 10), ev("end", 20)]),
            ],
            pending: 1,
        };
        assert!(check(&history, &[], &Journals::default()).duplicated == 0);
        let line =
            |j: &str, k: &str| format!(r#"{{"at_ms":1,"job_id":"{j}","event":{{"type":"{k}"}}}}"#);
        let w1 = [line("twice", "started"), line("twice", "succeeded")].join("\n");
        let w2 = [
            line("twice", "started"),
            line("twice", "succeeded"),
            line("once", "started"),
            line("other", "started"),
        ]
        .join("\n");
        let journals = Journals::from_exports(&[("w1".into(), w1), ("w2".into(), w2)]).unwrap();
        let f = check(&history, &[], &journals);
        assert_eq!((f.duplicated, f.stuck, f.journals), (1, 2, 2));
        assert!(f
            .violations
            .iter()
            .any(|v| v.contains("twice succeeded 2 times")));
        assert!(f
            .violations
            .iter()
            .any(|v| v.contains("once is left running in w2")));
    }

    /// A consumer left waiting for an ack of a message the stream no longer holds, and one job
    /// the stream still holds: the violation says which sequences and what the journals hold.
    #[test]
    fn unsettled_jobs_are_explained_by_sequence_and_journal() {
        let history = History {
            unsettled: Some(UnsettledReport {
                delivered: 14,
                ack_floor: 11,
                num_ack_pending: 2,
                first: 3,
                last: 14,
                messages: 2,
                after_floor: vec![(12, None), (13, Some("kept".into())), (14, None)],
                ..UnsettledReport::default()
            }),
            jobs: vec![job("kept", vec![ev("start", 10), ev("end", 20)])],
            pending: 2,
        };
        let line = |k: &str| format!(r#"{{"at_ms":1,"job_id":"kept","event":{{"type":"{k}"}}}}"#);
        let w1 = [line("received"), line("succeeded"), line("acked")].join("\n");
        let journals = Journals::from_exports(&[("w1".into(), w1)]).unwrap();
        let f = check(&history, &[], &journals);
        let v = &f.violations[0];
        assert!(
            v.starts_with("2 jobs are still unsettled on the broker ("),
            "{v}"
        );
        for part in [
            "delivered up to seq 14, ack floor seq 11, 0 pending, 2 ack-pending",
            "seqs 3..=14, 2 messages",
            "2 sequences gone from the stream (first: 12, 14)",
            "seq 13 held: job kept, journals: w1: received succeeded acked",
        ] {
            assert!(v.contains(part), "{part} is not in: {v}");
        }
    }
}
