//! The `llm_inference` handler (docs/wire-format.md#llm-engines): validates the payload ([`request`]), picks the
//! engine by `backend`, waits (bounded) for it to be ready ([`engines`]), streams the generation
//! ([`client`], parsed by [`parse`]) token by token into the job's chunks, and returns
//! `{content, finish_reason, usage}`. Cancellation and the job deadline reach the engine: the
//! runner's token stops the stream and the HTTP connection is closed at once. This module never
//! publishes, journals or settles (the runner does), and never logs prompts or generated text.

pub mod client;
pub mod engines;
pub mod parse;
pub mod request;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Value};

pub use client::LlmError;
pub use engines::LlmConfig;
pub use request::{Backend, LlmRequest};

use super::{Handler, HandlerError, JobContext};

/// Runs `llm_inference` jobs against the configured engines.
#[derive(Debug)]
pub struct LlmHandler {
    config: LlmConfig,
    http: reqwest::Client,
    ready: engines::Readiness,
}

impl LlmHandler {
    pub fn new(config: LlmConfig) -> Self {
        let http = super::http::build_client(|| {
            reqwest::Client::builder()
                .connect_timeout(config.connect_timeout)
                .tcp_nodelay(true)
                .pool_idle_timeout(Duration::from_secs(30))
        })
        .expect("a client that trusts no certificate authority always builds");
        Self {
            config,
            http,
            ready: engines::Readiness::default(),
        }
    }

    pub fn config(&self) -> &LlmConfig {
        &self.config
    }
}

#[async_trait]
impl Handler for LlmHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let req = LlmRequest::from_payload(&ctx.job.payload)
            .map_err(|e| HandlerError::permanent(format!("llm_inference: {e}")))?;
        let backend = req.backend;
        let base = self.config.url(backend);
        let fail = |e: LlmError| {
            let msg = format!("llm_inference on {} ({base}): {e}", backend.name());
            if e.retryable() {
                HandlerError::retryable(msg)
            } else {
                HandlerError::permanent(msg)
            }
        };
        self.ready
            .ensure(&self.http, backend, base, &self.config, &ctx.cancel)
            .await
            .map_err(fail)?;
        let call = req.to_call();
        let timeouts = client::Timeouts {
            first_token: self.config.first_token_timeout,
            idle: self.config.idle_timeout,
        };
        let started = Instant::now();
        let answer = client::generate(&self.http, base, &call, timeouts, &ctx.cancel, &ctx.chunks)
            .await
            .map_err(|e| {
                if matches!(e, LlmError::Connect(_)) {
                    self.ready.forget(base);
                }
                tracing::info!(job_id = %ctx.job.id, engine = backend.name(), error = %e, "generation stopped");
                fail(e)
            })?;
        tracing::info!(
            job_id = %ctx.job.id,
            engine = backend.name(),
            tokens = answer.tokens,
            ms = started.elapsed().as_millis() as u64,
            finish_reason = answer.finish_reason.as_deref().unwrap_or(""),
            "generation finished"
        );
        Ok(json!({
            "content": answer.content,
            "finish_reason": answer.finish_reason,
            "usage": answer.usage.map(parse::Usage::to_json),
        }))
    }
}
