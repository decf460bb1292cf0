//! The transport selector of `auto`: a pure state machine that, fed with health observations of
//! ordered candidates (best first), decides which one delivers jobs. It owns the switching rules
//! and nothing else: it never probes, sleeps or reads a clock (the time is a parameter), so every
//! rule is tested without a broker.
//!
//! Rules:
//! - The active candidate is abandoned once it has been unhealthy for `fail_after` (measured from
//!   its first failed observation); the replacement is the best candidate observed healthy.
//! - A better candidate than the active one takes over once it has been healthy for
//!   `recover_after` without a failure in between (so a flapping broker is not chased).
//! - With nothing healthy, the active candidate stays (there is nowhere better to go).

use std::time::{Duration, Instant};

/// How quickly the selector reacts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectorPolicy {
    /// How long the active candidate may fail before another takes over.
    pub fail_after: Duration,
    /// How long a better candidate must stay healthy before it takes over again.
    pub recover_after: Duration,
}

impl Default for SelectorPolicy {
    fn default() -> Self {
        Self {
            fail_after: Duration::from_secs(3),
            recover_after: Duration::from_secs(5),
        }
    }
}

/// What the selector knows about one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Never observed yet.
    Unknown,
    /// Healthy since the instant (the first healthy observation of the current run).
    Healthy(Instant),
    /// Unhealthy since the instant, with the last reason.
    Unhealthy(Instant, String),
}

/// A decision to move from one candidate to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switch {
    pub from: usize,
    pub to: usize,
    pub reason: String,
}

/// The state machine. Candidates are indexes into the caller's ordered list (0 = best).
#[derive(Debug, Clone)]
pub struct Selector {
    names: Vec<String>,
    seen: Vec<Seen>,
    active: usize,
    policy: SelectorPolicy,
}

impl Selector {
    /// A selector over `names` (best first); the best one is active until observations say
    /// otherwise.
    pub fn new(names: Vec<String>, policy: SelectorPolicy) -> Self {
        assert!(!names.is_empty(), "auto needs at least one candidate");
        Self {
            seen: vec![Seen::Unknown; names.len()],
            names,
            active: 0,
            policy,
        }
    }

    /// Makes candidate `i` active without a switch (the first choice at start).
    pub fn start_at(&mut self, i: usize) {
        self.active = i;
    }

    pub fn active(&self) -> usize {
        self.active
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    /// Whether candidate `i` was healthy at its last observation.
    pub fn is_healthy(&self, i: usize) -> bool {
        matches!(self.seen[i], Seen::Healthy(_))
    }

    /// Records one observation of candidate `i` at `now` and returns the switch it causes, if
    /// any (the selector has already applied it).
    pub fn observe(
        &mut self,
        i: usize,
        healthy: bool,
        detail: &str,
        now: Instant,
    ) -> Option<Switch> {
        self.seen[i] = match (&self.seen[i], healthy) {
            (Seen::Healthy(since), true) => Seen::Healthy(*since),
            (_, true) => Seen::Healthy(now),
            (Seen::Unhealthy(since, _), false) => Seen::Unhealthy(*since, detail.to_string()),
            (_, false) => Seen::Unhealthy(now, detail.to_string()),
        };
        self.decide(now)
    }

    /// Re-evaluates the rules at `now` (also useful without a new observation, as time passes).
    pub fn decide(&mut self, now: Instant) -> Option<Switch> {
        let from = self.active;
        let (to, reason) = match &self.seen[from] {
            Seen::Unhealthy(since, detail)
                if now.duration_since(*since) >= self.policy.fail_after =>
            {
                let to = (0..self.seen.len()).find(|&j| j != from && self.is_healthy(j))?;
                let reason = format!(
                    "{} failing for {:.1}s ({detail}); {} is healthy",
                    self.names[from],
                    now.duration_since(*since).as_secs_f64(),
                    self.names[to]
                );
                (to, reason)
            }
            _ => {
                let to = (0..from).find(|&j| match self.seen[j] {
                    Seen::Healthy(since) => now.duration_since(since) >= self.policy.recover_after,
                    _ => false,
                })?;
                let reason = format!(
                    "{} healthy again for {:.1}s, preferred to {}",
                    self.names[to],
                    self.policy.recover_after.as_secs_f64(),
                    self.names[from]
                );
                (to, reason)
            }
        };
        self.active = to;
        Some(Switch { from, to, reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    fn selector(n: usize) -> (Selector, Instant) {
        let names = (0..n).map(|i| format!("t{i}")).collect();
        (
            Selector::new(
                names,
                SelectorPolicy {
                    fail_after: 3 * S,
                    recover_after: 5 * S,
                },
            ),
            Instant::now(),
        )
    }

    #[test]
    fn the_best_candidate_starts_active_and_stays_while_healthy() {
        let (mut sel, t0) = selector(3);
        for k in 0..10 {
            for i in 0..3 {
                assert_eq!(sel.observe(i, true, "", t0 + k * S), None);
            }
        }
        assert_eq!(sel.active(), 0);
    }

    #[test]
    fn a_failing_active_is_left_only_after_fail_after() {
        let (mut sel, t0) = selector(2);
        sel.observe(1, true, "", t0);
        assert_eq!(sel.observe(0, false, "refused", t0), None);
        assert_eq!(sel.observe(0, false, "refused", t0 + 2 * S), None);
        let sw = sel.observe(0, false, "refused", t0 + 3 * S).unwrap();
        assert_eq!((sw.from, sw.to), (0, 1));
        assert!(sw.reason.contains("refused"), "{}", sw.reason);
        assert_eq!(sel.active(), 1);
    }

    #[test]
    fn a_single_success_resets_the_failure_clock() {
        let (mut sel, t0) = selector(2);
        sel.observe(1, true, "", t0);
        sel.observe(0, false, "x", t0);
        sel.observe(0, true, "", t0 + 2 * S);
        assert_eq!(sel.observe(0, false, "x", t0 + 4 * S), None);
        assert_eq!(sel.observe(0, false, "x", t0 + 6 * S), None);
        assert!(sel.observe(0, false, "x", t0 + 7 * S).is_some());
    }

    #[test]
    fn nothing_healthy_means_no_switch() {
        let (mut sel, t0) = selector(2);
        sel.observe(1, false, "down", t0);
        assert_eq!(sel.observe(0, false, "down", t0 + 10 * S), None);
        assert_eq!(sel.active(), 0);
    }

    #[test]
    fn the_better_candidate_comes_back_after_recover_after() {
        let (mut sel, t0) = selector(3);
        sel.observe(2, true, "", t0);
        sel.observe(0, false, "down", t0);
        sel.observe(1, false, "down", t0);
        assert_eq!(sel.observe(0, false, "down", t0 + 3 * S).unwrap().to, 2);
        // t1 recovers first, then t0: t1 takes over, then t0.
        assert_eq!(sel.observe(1, true, "", t0 + 4 * S), None);
        assert_eq!(sel.observe(1, true, "", t0 + 9 * S).unwrap().to, 1);
        sel.observe(0, true, "", t0 + 10 * S);
        assert_eq!(sel.observe(0, true, "", t0 + 14 * S), None);
        let sw = sel.observe(0, true, "", t0 + 15 * S).unwrap();
        assert_eq!((sw.from, sw.to), (1, 0));
    }

    #[test]
    fn a_flapping_better_candidate_is_not_chased() {
        let (mut sel, t0) = selector(2);
        sel.observe(1, true, "", t0);
        sel.observe(0, false, "down", t0);
        sel.observe(0, false, "down", t0 + 3 * S);
        assert_eq!(sel.active(), 1);
        for k in 4..30u32 {
            sel.observe(0, k % 3 != 0, "flap", t0 + k * S);
            assert_eq!(sel.active(), 1, "at {k}s");
        }
    }

    proptest! {
        /// Whatever the observations, the selector never moves to a candidate that was unhealthy
        /// at its last observation, and never leaves a healthy active one for a worse one.
        #[test]
        fn never_switches_to_an_unhealthy_or_worse_candidate(
            obs in proptest::collection::vec((0usize..4, any::<bool>(), 0u64..3000), 1..200)
        ) {
            let (mut sel, t0) = selector(4);
            let mut now = t0;
            for (i, healthy, dt) in obs {
                now += Duration::from_millis(dt);
                let was_healthy = sel.is_healthy(sel.active());
                if let Some(sw) = sel.observe(i, healthy, "p", now) {
                    prop_assert!(sel.is_healthy(sw.to));
                    prop_assert_ne!(sw.from, sw.to);
                    if was_healthy && sw.from != i {
                        prop_assert!(sw.to < sw.from);
                    }
                }
            }
        }
    }
}
