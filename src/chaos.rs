//! Crash points for the chaos suite (`chaos/`), compiled only with the cargo feature `chaos`;
//! the normal build has an empty, inlined [`point`] and no way to trigger any of this.
//!
//! A job asks to be crashed through its payload: `chaos_kill_at` names a [`Point`] and
//! `chaos_kill_attempts` says on which attempts (`N`: attempts 1..=N, default 1; `0`: every
//! attempt, a poison job). When the running worker reaches that point for that job it sends
//! itself SIGKILL: no destructor, no flush, exactly what an OOM kill or a power cut leaves behind.
//! This module owns the decision and the kill; it must never change what the worker does when no
//! point matches, and it must never exist in a build without the feature.

/// A place in a job's lifecycle where the chaos build can kill the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    /// The delivery arrived; nothing is journaled yet.
    AfterClaim,
    /// `received` and `started` are appended (durable or not: both happen in real crashes).
    AfterJournal,
    /// Half way through a `sleep` job's handler.
    MidHandler,
    /// The handler returned and `succeeded` is appended (buffered), before the settlement.
    AfterResult,
    /// The settlement is durable in the journal and `end` is published; the broker has not
    /// been told yet.
    BeforeAck,
}

impl Point {
    /// The name a payload uses.
    pub fn name(self) -> &'static str {
        match self {
            Point::AfterClaim => "after_claim",
            Point::AfterJournal => "after_journal",
            Point::MidHandler => "mid_handler",
            Point::AfterResult => "after_result",
            Point::BeforeAck => "before_ack",
        }
    }
}

/// Whether `job` asks to be killed at `at` on its current attempt: the worker then takes the
/// path on which that point exists (the `end` published on its own before the ack).
#[cfg(feature = "chaos")]
pub fn wants(at: Point, job: &citadel_transports::Job) -> bool {
    if job.payload_str("chaos_kill_at").as_deref() != Some(at.name()) {
        return false;
    }
    let attempts = job
        .payload_str("chaos_kill_attempts")
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(1);
    attempts == 0 || job.attempt <= attempts
}

/// Kills this process with SIGKILL when `job` asks for it at `at` on its current attempt.
#[cfg(feature = "chaos")]
pub fn point(at: Point, job: &citadel_transports::Job) {
    if !wants(at, job) {
        return;
    }
    eprintln!(
        "citadel chaos: killing the worker at {} of job {} (attempt {})",
        at.name(),
        job.id,
        job.attempt
    );
    // PID 1 of a PID namespace cannot SIGKILL itself: the suite runs workers under an init.
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort();
}

/// Without the `chaos` feature: nothing.
#[cfg(not(feature = "chaos"))]
#[inline(always)]
pub fn point(_at: Point, _job: &citadel_transports::Job) {}

/// Without the `chaos` feature: never.
#[cfg(not(feature = "chaos"))]
#[inline(always)]
pub fn wants(_at: Point, _job: &citadel_transports::Job) -> bool {
    false
}
