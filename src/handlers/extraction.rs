//! `extraction` (alias `GLINER_EXTRACTION`): entity extraction by the node's extraction service
//! (a GLiNER server). The handler POSTs `{"text", "labels", "threshold"}` to the configured URL
//! and returns the service's `{"entities": [{start, end, text, label, score}]}`. While the
//! service is starting (connection refused, 502/503/504) it is retried for a bounded time; every
//! error says whether a new attempt can help. The handler never sends the text anywhere else.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

use super::http::{describe, status_is_retryable};
use super::{Handler, HandlerError, JobContext};
use citadel_transports::Backoff;

/// Where the service listens by default (GLiNER's server: `python -m gliner.serve`).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8000/gliner";

/// The service and how long to wait for it.
#[derive(Debug, Clone)]
pub struct ExtractionPolicy {
    pub url: String,
    /// How long the service may take to become ready before the attempt fails (retryable).
    pub ready_timeout: Duration,
    /// The deadline of one extraction request once the service is up.
    pub request_timeout: Duration,
}

impl Default for ExtractionPolicy {
    fn default() -> Self {
        Self {
            url: DEFAULT_URL.into(),
            ready_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(300),
        }
    }
}

/// The handler.
#[derive(Debug)]
pub struct Extraction {
    policy: ExtractionPolicy,
    http: reqwest::Client,
}

impl Extraction {
    pub fn new(policy: ExtractionPolicy) -> reqwest::Result<Self> {
        Ok(Self {
            http: super::http_client(Duration::from_secs(5))?,
            policy,
        })
    }
}

/// The request body from the payload: `text` (non-empty string), `labels` (non-empty list of
/// strings), optional `threshold` in [0, 1].
pub fn request_body(payload: &Value) -> Result<Value, HandlerError> {
    let bad = |m: &str| HandlerError::permanent(format!("extraction: {m}"));
    let text = payload
        .get("text")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| bad("the payload needs `text` (a non-empty string)"))?;
    let labels: Vec<&str> = payload
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .filter(|l: &Vec<&str>| !l.is_empty())
        .ok_or_else(|| bad("the payload needs `labels` (a non-empty list of strings)"))?;
    let mut body = json!({"text": text, "labels": labels});
    if let Some(t) = payload.get("threshold") {
        let t = t
            .as_f64()
            .filter(|t| (0.0..=1.0).contains(t))
            .ok_or_else(|| bad("`threshold` must be a number from 0 to 1"))?;
        body["threshold"] = json!(t);
    }
    Ok(body)
}

#[async_trait]
impl Handler for Extraction {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let body = request_body(&ctx.job.payload)?;
        let waited = Instant::now();
        let mut retrier = Backoff::RECONNECT.retrier();
        loop {
            let send = self
                .http
                .post(&self.policy.url)
                .json(&body)
                .timeout(self.policy.request_timeout)
                .send();
            let outcome = tokio::select! {
                r = send => r,
                () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("extraction: cancelled")),
            };
            // Not ready yet: nothing listens, or a proxy says the service is starting.
            let not_ready = match &outcome {
                Err(e) if e.is_connect() => Some(describe(e)),
                Ok(r) if matches!(r.status().as_u16(), 502..=504) => {
                    Some(format!("answered {}", r.status()))
                }
                _ => None,
            };
            if let Some(why) = not_ready {
                if waited.elapsed() >= self.policy.ready_timeout {
                    return Err(HandlerError::retryable(format!(
                        "extraction: the service at {} was not ready within {}s ({why})",
                        self.policy.url,
                        self.policy.ready_timeout.as_secs()
                    )));
                }
                tokio::select! {
                    () = tokio::time::sleep(retrier.next_delay()) => continue,
                    () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("extraction: cancelled")),
                }
            }
            let resp = outcome.map_err(|e| {
                HandlerError::retryable(format!(
                    "extraction: {}: {}",
                    self.policy.url,
                    describe(&e)
                ))
            })?;
            let status = resp.status();
            if !status.is_success() {
                let text = resp.text().await.unwrap_or_default();
                let detail: String = text.chars().take(300).collect();
                return Err(HandlerError {
                    message: format!("extraction: the service answered {status}: {detail}"),
                    retryable: status_is_retryable(status),
                });
            }
            let value: Value = resp.json().await.map_err(|e| {
                HandlerError::retryable(format!("extraction: unreadable answer: {}", describe(&e)))
            })?;
            let Some(entities) = value.get("entities").filter(|e| e.is_array()) else {
                return Err(HandlerError::permanent(format!(
                    "extraction: the service's answer has no `entities` list: {}",
                    value.to_string().chars().take(300).collect::<String>()
                )));
            };
            return Ok(json!({"entities": entities}));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_checked() {
        let b =
            request_body(&json!({"text": "Ada", "labels": ["person"], "threshold": 0.3})).unwrap();
        assert_eq!(
            b,
            json!({"text": "Ada", "labels": ["person"], "threshold": 0.3})
        );
        for bad in [
            json!({"labels": ["x"]}),
            json!({"text": "", "labels": ["x"]}),
            json!({"text": "a"}),
            json!({"text": "a", "labels": []}),
            json!({"text": "a", "labels": ["x"], "threshold": 2}),
        ] {
            assert!(!request_body(&bad).unwrap_err().retryable, "{bad}");
        }
    }
}
