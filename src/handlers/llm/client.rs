//! One generation request to an engine over HTTP, streamed: sends the call, reads the body as it
//! arrives, hands each token to the job's chunk sink at once and collects the answer. Enforces
//! the first-token and idle timeouts, and stops at once when the job is cancelled or its
//! deadline passes: the response is dropped, which closes the connection so the engine frees its
//! slot. Every failure becomes an [`LlmError`] that says whether a retry can help. Never decides
//! which engine to call (that is [`super::request`]).

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::parse::{self, ParseError, Step, StreamParser, Usage};
use super::request::EngineCall;
use crate::handlers::ChunkSink;

/// Why a generation failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the engine is not ready after waiting {}: {reason}", humantime::format_duration(*.waited))]
    NotReady { waited: Duration, reason: String },
    #[error("cannot reach the engine: {0}")]
    Connect(String),
    #[error("the engine answered HTTP {status}: {message}")]
    Http { status: u16, message: String },
    #[error("no token within {} of sending the request (first-token timeout)", humantime::format_duration(*.0))]
    FirstToken(Duration),
    #[error("the stream stalled: nothing for {} after {tokens} tokens (idle timeout)", humantime::format_duration(*.after))]
    Idle { after: Duration, tokens: u64 },
    #[error(transparent)]
    Stream(#[from] ParseError),
    #[error("the engine's stream was cut after {tokens} tokens, before it finished: {reason}")]
    Cut { tokens: u64, reason: String },
    #[error("cancelled")]
    Cancelled,
}

impl LlmError {
    /// Whether running the job again can succeed: an engine that is loading, unreachable,
    /// overloaded or cut off can recover; a request it rejects (4xx) or a stream it cannot
    /// speak will be the same next time.
    pub fn retryable(&self) -> bool {
        match self {
            LlmError::Http { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            LlmError::Stream(ParseError::Malformed(_)) => false,
            LlmError::Stream(ParseError::Engine(_)) => true,
            _ => true,
        }
    }
}

/// What the engine generated.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Answer {
    pub content: String,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// Tokens (stream messages with text) received.
    pub tokens: u64,
}

/// The engine's message from an error body: its JSON error message, else the text (capped).
pub(crate) fn error_text(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(m) = parse::engine_message(&v) {
            return m;
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        "(empty body)".into()
    } else {
        text.chars().take(500).collect()
    }
}

/// The timeouts of one call.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub first_token: Duration,
    pub idle: Duration,
}

/// Sends `call` to `base` and streams the answer into `sink`.
pub async fn generate(
    http: &reqwest::Client,
    base: &str,
    call: &EngineCall,
    timeouts: Timeouts,
    cancel: &CancellationToken,
    sink: &ChunkSink,
) -> Result<Answer, LlmError> {
    let sent = Instant::now();
    let limits = Limits {
        timeouts,
        first_deadline: tokio::time::Instant::now() + timeouts.first_token,
        cancel,
    };
    let request = http
        .post(format!("{base}{}", call.path))
        .json(&call.body)
        .send();
    let resp = tokio::select! {
        r = request => r.map_err(|e| LlmError::Connect(crate::handlers::http::describe(&e)))?,
        () = tokio::time::sleep_until(limits.first_deadline) => return Err(LlmError::FirstToken(timeouts.first_token)),
        () = cancel.cancelled() => return Err(LlmError::Cancelled),
    };
    if !resp.status().is_success() {
        return Err(limits.http_error(resp).await);
    }
    if !call.stream {
        return limits.whole(resp, call).await;
    }
    limits.stream(resp, call, sink, sent).await
}

/// What bounds one call while its answer is read: the timeouts, the first token's deadline
/// (counted from sending the request) and the job's cancellation.
struct Limits<'a> {
    timeouts: Timeouts,
    first_deadline: tokio::time::Instant,
    cancel: &'a CancellationToken,
}

impl Limits<'_> {
    /// The error for an answer that is not a success, with the engine's message from its body.
    async fn http_error(&self, resp: reqwest::Response) -> LlmError {
        let status = resp.status();
        let body = tokio::select! {
            b = resp.bytes() => b.unwrap_or_default(),
            () = tokio::time::sleep(self.timeouts.idle) => Default::default(),
            () = self.cancel.cancelled() => return LlmError::Cancelled,
        };
        LlmError::Http {
            status: status.as_u16(),
            message: error_text(&body),
        }
    }

    /// A non-streamed answer: the whole body, due by the first token's deadline.
    async fn whole(&self, resp: reqwest::Response, call: &EngineCall) -> Result<Answer, LlmError> {
        let body = tokio::select! {
            b = resp.bytes() => b.map_err(|e| LlmError::Cut { tokens: 0, reason: crate::handlers::http::describe(&e) })?,
            () = tokio::time::sleep_until(self.first_deadline) => return Err(LlmError::FirstToken(self.timeouts.first_token)),
            () = self.cancel.cancelled() => return Err(LlmError::Cancelled),
        };
        let (content, finish_reason, usage) = parse::parse_whole(call.protocol, &body)?;
        Ok(Answer {
            tokens: u64::from(!content.is_empty()),
            content,
            finish_reason,
            usage,
        })
    }

    /// A streamed answer, read until its final message; each token goes to `sink` at once.
    async fn stream(
        &self,
        mut resp: reqwest::Response,
        call: &EngineCall,
        sink: &ChunkSink,
        sent: Instant,
    ) -> Result<Answer, LlmError> {
        let mut parser = StreamParser::new(call.protocol);
        let mut answer = Answer::default();
        let mut done = false;
        while !done {
            let (steps, ended) = self.next_steps(&mut resp, &mut parser, &answer).await?;
            done = ended;
            done |= self.take_steps(steps, &mut answer, sink, sent).await?;
        }
        Ok(answer)
    }

    /// The steps in the next piece of the body, and whether the body ended; the piece is due
    /// within the first-token timeout before the first token and the idle timeout after it.
    async fn next_steps(
        &self,
        resp: &mut reqwest::Response,
        parser: &mut StreamParser,
        answer: &Answer,
    ) -> Result<(Vec<Step>, bool), LlmError> {
        let wait_until = if answer.tokens == 0 {
            self.first_deadline
        } else {
            tokio::time::Instant::now() + self.timeouts.idle
        };
        let piece = tokio::select! {
            c = resp.chunk() => c,
            () = tokio::time::sleep_until(wait_until) => {
                return Err(if answer.tokens == 0 {
                    LlmError::FirstToken(self.timeouts.first_token)
                } else {
                    LlmError::Idle { after: self.timeouts.idle, tokens: answer.tokens }
                });
            }
            () = self.cancel.cancelled() => return Err(LlmError::Cancelled),
        };
        match piece {
            Ok(Some(bytes)) => Ok((parser.push(&bytes)?, false)),
            Ok(None) => Ok((last_steps(parser, answer)?, true)),
            Err(e) => Err(LlmError::Cut {
                tokens: answer.tokens,
                reason: crate::handlers::http::describe(&e),
            }),
        }
    }

    /// Adds parsed steps to `answer`, sending each token to `sink`; whether the stream is done.
    async fn take_steps(
        &self,
        steps: Vec<Step>,
        answer: &mut Answer,
        sink: &ChunkSink,
        sent: Instant,
    ) -> Result<bool, LlmError> {
        let mut done = false;
        for step in steps {
            if let Some(text) = step.text {
                if answer.tokens == 0 {
                    tracing::debug!(
                        first_token_ms = sent.elapsed().as_millis() as u64,
                        "first token"
                    );
                }
                answer.tokens += 1;
                answer.content.push_str(&text);
                tokio::select! {
                    () = sink.send(text) => {}
                    () = self.cancel.cancelled() => return Err(LlmError::Cancelled),
                }
            }
            if step.finish_reason.is_some() {
                answer.finish_reason = step.finish_reason;
            }
            if step.usage.is_some() {
                answer.usage = step.usage;
            }
            done |= step.done;
        }
        Ok(done)
    }
}

/// The steps left in the parser when the body ends; the stream must have finished by then.
fn last_steps(parser: &mut StreamParser, answer: &Answer) -> Result<Vec<Step>, LlmError> {
    let steps: Vec<_> = parser.finish()?.into_iter().collect();
    let finished =
        steps.iter().any(|s| s.done || s.finish_reason.is_some()) || answer.finish_reason.is_some();
    if !finished {
        return Err(LlmError::Cut {
            tokens: answer.tokens,
            reason: "the body ended without the final message".into(),
        });
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_errors_a_retry_can_help() {
        let http = |status| LlmError::Http {
            status,
            message: String::new(),
        };
        assert!(!http(400).retryable() && !http(404).retryable());
        assert!(http(503).retryable() && http(429).retryable());
        assert!(!LlmError::Stream(ParseError::Malformed("x".into())).retryable());
        assert!(LlmError::Cut {
            tokens: 3,
            reason: String::new()
        }
        .retryable());
        assert_eq!(
            error_text(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            error_text(b"  Internal Server Error "),
            "Internal Server Error"
        );
    }
}
