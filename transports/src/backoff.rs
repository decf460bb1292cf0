//! The one backoff policy of citadel: exponential delays with jitter, used for job retries,
//! reconnects and settlement retries alike. The delay computation is pure (the random draw is a
//! parameter); [`Retrier`] keeps the step count for loops.

use std::time::Duration;

/// Exponential backoff: `initial * factor^(step)`, capped at `max`, then spread by ±`jitter`
/// (a fraction: 0.25 spreads a 4 s delay over 3–5 s) so workers that failed together do not
/// retry together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub factor: f64,
    pub jitter: f64,
}

impl Backoff {
    /// Job retries: 1 s, 2 s, 4 s … up to 5 min.
    pub const JOB_RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
    /// Reconnecting to a broker: 100 ms doubling to 5 s.
    pub const RECONNECT: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            factor: 2.0,
            jitter: 0.25,
        }
    }

    /// The delay before retry number `step` (0 for the first), with `draw` in `[0, 1)` choosing
    /// where in the jitter band it falls.
    pub fn delay_with(&self, step: u32, draw: f64) -> Duration {
        let base = self.initial.as_secs_f64() * self.factor.powi(step.min(64) as i32);
        let base = base.min(self.max.as_secs_f64());
        let spread = base * self.jitter * (2.0 * draw.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64(
            (base + spread).clamp(0.0, self.max.as_secs_f64() * (1.0 + self.jitter)),
        )
    }

    /// The delay before retry number `step`, with a random jitter.
    pub fn delay(&self, step: u32) -> Duration {
        self.delay_with(step, fastrand::f64())
    }

    /// A stepping retrier starting at step 0.
    pub fn retrier(&self) -> Retrier {
        Retrier {
            policy: *self,
            step: 0,
        }
    }
}

/// Counts consecutive failures for a loop: `next_delay` after each failure, `reset` on success.
#[derive(Debug, Clone)]
pub struct Retrier {
    policy: Backoff,
    step: u32,
}

impl Retrier {
    pub fn next_delay(&mut self) -> Duration {
        let d = self.policy.delay(self.step);
        self.step = self.step.saturating_add(1);
        d
    }

    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// How many failures in a row so far.
    pub fn failures(&self) -> u32 {
        self.step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_and_cap() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(b.delay_with(0, 0.5), Duration::from_millis(100));
        assert_eq!(b.delay_with(3, 0.5), Duration::from_millis(800));
        assert_eq!(b.delay_with(30, 0.5), Duration::from_secs(5));
        assert_eq!(b.delay_with(u32::MAX, 0.5), Duration::from_secs(5));
    }

    #[test]
    fn jitter_stays_in_its_band() {
        let b = Backoff::JOB_RETRY;
        assert_eq!(b.delay_with(2, 0.0), Duration::from_secs(3));
        assert_eq!(b.delay_with(2, 1.0), Duration::from_secs(5));
        for _ in 0..1000 {
            let d = b.delay(2);
            assert!(
                d >= Duration::from_secs(3) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_retrier_steps_and_resets() {
        let mut r = Backoff::new(Duration::from_millis(10), Duration::from_secs(1)).retrier();
        let first = r.next_delay();
        let _ = r.next_delay();
        let third = r.next_delay();
        assert!(third > first);
        assert_eq!(r.failures(), 3);
        r.reset();
        assert_eq!(r.failures(), 0);
    }
}
