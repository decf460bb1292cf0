//! Where the inference engines are and how long to wait for them: the base URL of each backend
//! (docs/wire-format.md#llm-engines defaults, overridden by `--engine NAME=URL`, `CITADEL_ENGINES` or the config
//! file's `llm:` section) and the connect, readiness, first-token and idle timeouts. Also the
//! readiness probe: a bounded wait for an engine that is still loading, remembered for a few
//! seconds once it answers. Never sends a generation request (that is [`super::client`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use citadel_transports::Backoff;
use tokio_util::sync::CancellationToken;

use super::client::LlmError;
use super::request::Backend;

/// The engines and the timeouts of `llm_inference`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmConfig {
    /// Base URL per backend (`http://host:port`, no trailing slash).
    pub engines: BTreeMap<Backend, String>,
    /// TCP connect to the engine.
    pub connect_timeout: Duration,
    /// How long a job waits for an engine that is not ready yet (loading a model, starting).
    pub ready_timeout: Duration,
    /// From sending the request to the first generated token (covers queueing and prefill).
    pub first_token_timeout: Duration,
    /// Between two pieces of the stream once tokens flow.
    pub idle_timeout: Duration,
}

impl Default for LlmConfig {
    fn default() -> Self {
        Self {
            engines: Backend::ALL
                .iter()
                .map(|b| (*b, b.default_url().to_string()))
                .collect(),
            connect_timeout: Duration::from_secs(5),
            ready_timeout: Duration::from_secs(30),
            first_token_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(30),
        }
    }
}

impl LlmConfig {
    pub fn url(&self, backend: Backend) -> &str {
        self.engines
            .get(&backend)
            .map_or(backend.default_url(), String::as_str)
    }

    /// Applies `NAME=URL` (`vllm=http://10.0.0.5:8000`), or `NAME=PORT` for loopback.
    pub fn set_engine(&mut self, spec: &str) -> Result<(), String> {
        let (name, target) = spec.split_once('=').ok_or_else(|| {
            format!("`{spec}`: an engine is NAME=URL, e.g. vllm=http://127.0.0.1:8201")
        })?;
        let backend = Backend::parse(name).ok_or_else(|| {
            format!("`{name}` is not an engine; known: vllm, sglang, ollama, llamacpp")
        })?;
        let target = target.trim().trim_end_matches('/');
        let url = if target.parse::<u16>().is_ok() {
            format!("http://127.0.0.1:{target}")
        } else if let Some(rest) = target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
        {
            if rest.is_empty() || rest.contains(char::is_whitespace) {
                return Err(format!("`{target}` is not a URL"));
            }
            target.to_string()
        } else {
            return Err(format!(
                "`{target}`: the engine URL must start with http:// or https:// (or be a port)"
            ));
        };
        self.engines.insert(backend, url);
        Ok(())
    }
}

/// An engine that answered its readiness probe is trusted this long without probing again.
const READY_TTL: Duration = Duration::from_secs(5);
/// Probing a loading engine: 100 ms doubling to 2 s.
const PROBE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));

/// Remembers which engines answered their readiness probe recently.
#[derive(Debug, Default)]
pub struct Readiness {
    ready_at: Mutex<HashMap<String, Instant>>,
}

impl Readiness {
    /// Forgets that `base` was ready (after a connection failure).
    pub fn forget(&self, base: &str) {
        self.ready_at.lock().expect("poisoned").remove(base);
    }

    /// Returns once the engine at `base` answers its readiness probe; waits at most
    /// `config.ready_timeout` (an engine that is still loading is a retryable failure, never a
    /// hang).
    pub async fn ensure(
        &self,
        http: &reqwest::Client,
        backend: Backend,
        base: &str,
        config: &LlmConfig,
        cancel: &CancellationToken,
    ) -> Result<(), LlmError> {
        if let Some(at) = self.ready_at.lock().expect("poisoned").get(base) {
            if at.elapsed() < READY_TTL {
                return Ok(());
            }
        }
        let url = format!("{base}{}", backend.readiness_path());
        let started = Instant::now();
        let mut retrier = PROBE_BACKOFF.retrier();
        loop {
            let probe = http
                .get(&url)
                .timeout(config.connect_timeout.max(Duration::from_secs(1)))
                .send();
            let reason = tokio::select! {
                r = probe => match r {
                    // Anything but a server error means the engine is up and serving HTTP.
                    Ok(resp) if resp.status().as_u16() < 500 && resp.status().as_u16() != 429 => {
                        self.ready_at
                            .lock()
                            .expect("poisoned")
                            .insert(base.to_string(), Instant::now());
                        return Ok(());
                    }
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let body = resp.bytes().await.unwrap_or_default();
                        let msg = super::client::error_text(&body);
                        format!("{url} answered HTTP {status}: {msg}")
                    }
                    Err(e) => format!("{url}: {}", crate::handlers::http::describe(&e)),
                },
                () = cancel.cancelled() => return Err(LlmError::Cancelled),
            };
            let left = config.ready_timeout.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(LlmError::NotReady {
                    waited: config.ready_timeout,
                    reason,
                });
            }
            tracing::debug!(engine = backend.name(), reason = %reason, "engine not ready yet");
            tokio::select! {
                () = tokio::time::sleep(retrier.next_delay().min(left)) => {}
                () = cancel.cancelled() => return Err(LlmError::Cancelled),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_specs() {
        let mut c = LlmConfig::default();
        assert_eq!(c.url(Backend::Vllm), "http://127.0.0.1:8201");
        assert_eq!(c.url(Backend::Sglang), "http://127.0.0.1:30000");
        c.set_engine("vllm=http://10.0.0.5:8000/").unwrap();
        c.set_engine("llama.cpp=9000").unwrap();
        assert_eq!(c.url(Backend::Vllm), "http://10.0.0.5:8000");
        assert_eq!(c.url(Backend::LlamaCpp), "http://127.0.0.1:9000");
        for bad in ["vllm", "gpt=http://x", "ollama=ftp://x", "ollama=http://"] {
            assert!(c.set_engine(bad).is_err(), "{bad}");
        }
    }
}
