//! Handlers: the code that does a job. One trait ([`Handler`]), one registry ([`Registry`]) that
//! maps job types (and their aliases) to handlers. A handler gets the job, a cancellation token,
//! its deadline and a sink for streamed chunks; it returns a JSON result or an error that says
//! whether a retry can help. Handlers never settle, journal or publish: the runner does.

mod device_config;
mod diag;
pub mod download;
pub mod extraction;
mod http;
pub mod llm;
mod shell;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use citadel_transports::Job;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use device_config::DeviceConfigHandler;
pub use download::{DownloadPolicy, ModelDownload};
pub use extraction::{Extraction, ExtractionPolicy};
pub use http::http_client;
pub use llm::{LlmConfig, LlmHandler};
pub use shell::{ShellHandler, ShellPolicy};

/// Why a handler did not produce a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct HandlerError {
    pub message: String,
    /// Whether running the job again can succeed.
    pub retryable: bool,
}

impl HandlerError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

/// Where a handler writes streamed output. Each chunk becomes a `chunk` event with its index.
#[derive(Debug, Clone)]
pub struct ChunkSink {
    tx: mpsc::Sender<String>,
}

impl ChunkSink {
    /// A sink and the receiving end the runner drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<String>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// Sends one chunk; waits when the runner is behind (backpressure).
    pub async fn send(&self, content: impl Into<String>) {
        // The receiver only goes away when the job is over; late chunks are dropped then.
        let _ = self.tx.send(content.into()).await;
    }
}

/// Everything a handler gets for one attempt.
#[derive(Debug)]
pub struct JobContext {
    pub job: Job,
    /// Fires on cancellation, deadline, lost lease or shutdown; stop promptly when it does.
    pub cancel: CancellationToken,
    pub deadline: Option<Instant>,
    pub chunks: ChunkSink,
}

#[async_trait]
pub trait Handler: Send + Sync + std::fmt::Debug {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError>;
}

/// Job types and their handlers. Aliases (`SHELL_COMMAND` for `shell_command`) resolve to the
/// same handler.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
    aliases: BTreeMap<String, String>,
}

impl Registry {
    /// The built-in handlers. `shell_command` is registered only when the policy enables it;
    /// `llm_inference` uses the default engine addresses (`citadel work` registers it again with
    /// the configured ones). A build with the `chaos` feature also has `panic` (the chaos suite's
    /// unwinding handler).
    pub fn builtin(shell: ShellPolicy) -> Self {
        let mut r = Self::default();
        r.register("noop", Arc::new(diag::Noop));
        r.register("echo", Arc::new(diag::Echo));
        r.register("sleep", Arc::new(diag::Sleep));
        r.register("fail", Arc::new(diag::Fail));
        #[cfg(feature = "chaos")]
        r.register("panic", Arc::new(diag::Panic));
        r.register(
            "llm_inference",
            Arc::new(LlmHandler::new(LlmConfig::default())),
        );
        if shell.enabled {
            r.register("shell_command", Arc::new(ShellHandler::new(shell)));
            r.alias("SHELL_COMMAND", "shell_command");
        }
        r
    }

    /// Adds `model_download` (alias `DOWNLOAD_MODEL`) and `extraction` (alias
    /// `GLINER_EXTRACTION`), the handlers that need the network and a models folder.
    pub fn with_node_handlers(
        mut self,
        downloads: DownloadPolicy,
        extraction: ExtractionPolicy,
    ) -> reqwest::Result<Self> {
        self.register("model_download", Arc::new(ModelDownload::new(downloads)?));
        self.alias("DOWNLOAD_MODEL", "model_download");
        self.register("extraction", Arc::new(Extraction::new(extraction)?));
        self.alias("GLINER_EXTRACTION", "extraction");
        Ok(self)
    }

    pub fn register(&mut self, name: &str, handler: Arc<dyn Handler>) {
        self.handlers.insert(name.to_string(), handler);
    }

    pub fn alias(&mut self, alias: &str, name: &str) {
        self.aliases.insert(alias.to_string(), name.to_string());
    }

    pub fn get(&self, job_type: &str) -> Option<Arc<dyn Handler>> {
        let name = self.aliases.get(job_type).map_or(job_type, String::as_str);
        self.handlers.get(name).cloned()
    }

    /// The supported types, aliases included, for error messages.
    pub fn names(&self) -> Vec<String> {
        self.handlers
            .keys()
            .chain(self.aliases.keys())
            .cloned()
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    pub fn ctx(
        job_type: &str,
        payload: Value,
        attempt: u32,
    ) -> (JobContext, mpsc::Receiver<String>) {
        let (chunks, rx) = ChunkSink::channel(1024);
        let job = Job {
            id: citadel_transports::JobId::new("t-1").unwrap(),
            job_type: job_type.into(),
            payload,
            ray_id: None,
            enqueued_at: None,
            attempt,
            source: "test".into(),
        };
        (
            JobContext {
                job,
                cancel: CancellationToken::new(),
                deadline: None,
                chunks,
            },
            rx,
        )
    }
}
