//! The `citadel work` settings of `llm_inference`: `--engine NAME=URL` (repeatable;
//! `CITADEL_ENGINES=vllm=…,ollama=…`) and the engine timeouts, layered over the config file's
//! `llm:` section and the docs/wire-format.md#llm-engines defaults. Only builds an [`LlmConfig`]; never contacts an
//! engine.

use anyhow::Context as _;
use clap::Args;

use crate::config::LlmSection;
use crate::format;
use crate::handlers::LlmConfig;

#[derive(Debug, Args)]
pub struct EngineArgs {
    /// Where an inference engine listens, NAME=URL or NAME=PORT (repeatable or comma separated):
    /// vllm (default http://127.0.0.1:8201), sglang (:30000), ollama (:11434), llamacpp (:8200).
    #[arg(
        long = "engine",
        env = "CITADEL_ENGINES",
        value_delimiter = ',',
        value_name = "NAME=URL"
    )]
    engines: Vec<String>,
    /// TCP connect timeout to an engine (default 5s).
    #[arg(long, env = "CITADEL_LLM_CONNECT_TIMEOUT", value_name = "DURATION")]
    llm_connect_timeout: Option<String>,
    /// How long a job waits for an engine that is not ready (loading a model) before it fails
    /// with a retryable error (default 30s).
    #[arg(long, env = "CITADEL_LLM_READY_TIMEOUT", value_name = "DURATION")]
    llm_ready_timeout: Option<String>,
    /// From sending the request to the first token (default 2m).
    #[arg(long, env = "CITADEL_LLM_FIRST_TOKEN_TIMEOUT", value_name = "DURATION")]
    llm_first_token_timeout: Option<String>,
    /// Longest silence between two tokens before the stream is abandoned (default 30s).
    #[arg(long, env = "CITADEL_LLM_IDLE_TIMEOUT", value_name = "DURATION")]
    llm_idle_timeout: Option<String>,
}

impl EngineArgs {
    /// Defaults < the file's `llm:` section < environment and flags.
    pub fn config(&self, file: &LlmSection) -> anyhow::Result<LlmConfig> {
        let mut c = LlmConfig::default();
        for (name, url) in file.engines.iter().flatten() {
            c.set_engine(&format!("{name}={url}"))
                .map_err(anyhow::Error::msg)
                .context("in `llm.engines` of the config file")?;
        }
        for spec in &self.engines {
            c.set_engine(spec)
                .map_err(anyhow::Error::msg)
                .context("--engine")?;
        }
        for (name, flag, from_file, slot) in [
            (
                "llm_connect_timeout",
                &self.llm_connect_timeout,
                &file.connect_timeout,
                &mut c.connect_timeout,
            ),
            (
                "llm_ready_timeout",
                &self.llm_ready_timeout,
                &file.ready_timeout,
                &mut c.ready_timeout,
            ),
            (
                "llm_first_token_timeout",
                &self.llm_first_token_timeout,
                &file.first_token_timeout,
                &mut c.first_token_timeout,
            ),
            (
                "llm_idle_timeout",
                &self.llm_idle_timeout,
                &file.idle_timeout,
                &mut c.idle_timeout,
            ),
        ] {
            if let Some(v) = flag.as_ref().or(from_file.as_ref()) {
                *slot = format::parse_duration(v).with_context(|| format!("setting `{name}`"))?;
            }
        }
        Ok(c)
    }
}
