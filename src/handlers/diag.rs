//! The diagnostic job types used by benchmarks and chaos tests (ARCHITECTURE.md): `noop`, `echo`,
//! `sleep {ms}` and `fail {times?}`, and in a build with the cargo feature `chaos` only,
//! `panic {times?}` (the chaos suite's handler-panic scenario). They do nothing harmful and never
//! touch the machine.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::{Handler, HandlerError, JobContext};

/// Result `{}`.
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl Handler for Noop {
    async fn run(&self, _ctx: &JobContext) -> Result<Value, HandlerError> {
        Ok(json!({}))
    }
}

/// Result: the payload.
#[derive(Debug)]
pub struct Echo;

#[async_trait]
impl Handler for Echo {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        Ok(ctx.job.payload.clone())
    }
}

/// Sleeps `ms` milliseconds (number or numeric string), honouring cancellation.
#[derive(Debug)]
pub struct Sleep;

#[async_trait]
impl Handler for Sleep {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let ms: u64 = match ctx.job.payload_str("ms") {
            None => 0,
            Some(s) => s.parse().map_err(|_| {
                HandlerError::permanent(format!(
                    "sleep: `ms` must be a whole number of milliseconds, got `{s}`"
                ))
            })?,
        };
        let half = Duration::from_millis(ms / 2);
        tokio::select! {
            () = tokio::time::sleep(half) => {}
            () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("sleep: cancelled")),
        }
        crate::chaos::point(crate::chaos::Point::MidHandler, &ctx.job);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms) - half) => Ok(json!({"slept_ms": ms})),
            () = ctx.cancel.cancelled() => Err(HandlerError::retryable("sleep: cancelled")),
        }
    }
}

/// Fails `times` times (attempts 1..=times) then succeeds; without `times`, always fails. The
/// error says a retry can help.
#[derive(Debug)]
pub struct Fail;

#[async_trait]
impl Handler for Fail {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let times = match ctx.job.payload_str("times") {
            None => None,
            Some(s) => Some(s.parse::<u32>().map_err(|_| {
                HandlerError::permanent(format!("fail: `times` must be a whole number, got `{s}`"))
            })?),
        };
        match times {
            Some(t) if ctx.job.attempt > t => Ok(json!({"failed_attempts": t})),
            _ => Err(HandlerError::retryable(format!(
                "fail: deliberate failure on attempt {}",
                ctx.job.attempt
            ))),
        }
    }
}

/// Panics on attempts 1..=`times` (without `times`, on every attempt), then succeeds: a handler
/// that unwinds instead of returning, for the chaos suite. Compiled only with the `chaos`
/// feature, so no normal build can be made to panic on purpose.
#[cfg(feature = "chaos")]
#[derive(Debug)]
pub struct Panic;

#[cfg(feature = "chaos")]
#[async_trait]
impl Handler for Panic {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let times = ctx
            .job
            .payload_str("times")
            .and_then(|s| s.parse::<u32>().ok());
        match times {
            Some(t) if ctx.job.attempt > t => Ok(json!({"panicked_attempts": t})),
            _ => panic!(
                "panic: deliberate panic of job {} on attempt {}",
                ctx.job.id, ctx.job.attempt
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::ctx;
    use super::*;

    #[tokio::test]
    async fn noop_echo_and_fail() {
        assert_eq!(
            Noop.run(&ctx("noop", json!({}), 1).0).await.unwrap(),
            json!({})
        );
        let payload = json!({"a": [1, 2]});
        assert_eq!(
            Echo.run(&ctx("echo", payload.clone(), 1).0).await.unwrap(),
            payload
        );
        let err = Fail.run(&ctx("fail", json!({}), 7).0).await.unwrap_err();
        assert!(err.retryable);
        assert!(Fail
            .run(&ctx("fail", json!({"times": 2}), 2).0)
            .await
            .is_err());
        assert!(Fail
            .run(&ctx("fail", json!({"times": "2"}), 3).0)
            .await
            .is_ok());
        assert!(
            !Fail
                .run(&ctx("fail", json!({"times": "x"}), 3).0)
                .await
                .unwrap_err()
                .retryable
        );
    }

    #[tokio::test]
    async fn sleep_honours_cancellation() {
        let (c, _rx) = ctx("sleep", json!({"ms": 60_000}), 1);
        c.cancel.cancel();
        let started = std::time::Instant::now();
        assert!(Sleep.run(&c).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
        let (c, _rx) = ctx("sleep", json!({"ms": "5"}), 1);
        assert_eq!(Sleep.run(&c).await.unwrap(), json!({"slept_ms": 5}));
        let (c, _rx) = ctx("sleep", json!({"ms": "soon"}), 1);
        assert!(!Sleep.run(&c).await.unwrap_err().retryable);
    }

    #[cfg(feature = "chaos")]
    #[tokio::test]
    async fn panic_panics_until_its_times() {
        use futures_util::FutureExt;
        let (c, _rx) = ctx("panic", json!({"times": 1}), 1);
        let unwound = std::panic::AssertUnwindSafe(Panic.run(&c))
            .catch_unwind()
            .await;
        assert!(unwound.is_err());
        let (c, _rx) = ctx("panic", json!({"times": "1"}), 2);
        assert_eq!(
            Panic.run(&c).await.unwrap(),
            json!({"panicked_attempts": 1})
        );
    }
}
