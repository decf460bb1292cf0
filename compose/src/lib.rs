//! `citadel-compose`: the inference engines a node runs as Docker Compose services (docs/node-management.md;
//! ports in docs/wire-format.md#llm-engines). It owns the compose files embedded in the binary ([`files`]), the driver that runs them
//! with `docker compose` (v2) or `docker-compose` (v1) as project `PREFIX-<engine>` ([`driver`]),
//! and the HTTP readiness probes ([`probe`]). It must never decide *which* services a node runs
//! (the manifest does) and never pull models or talk to an engine beyond its readiness endpoint.

pub mod driver;
pub mod files;
pub mod probe;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

pub use driver::{list_services, Driver, ServiceState, ServiceStatus, Tool};

/// An inference engine citadel knows how to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Engine {
    Vllm,
    Ollama,
    Llamacpp,
    Lmstudio,
}

impl Engine {
    pub const ALL: [Engine; 4] = [
        Engine::Vllm,
        Engine::Ollama,
        Engine::Llamacpp,
        Engine::Lmstudio,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Engine::Vllm => "vllm",
            Engine::Ollama => "ollama",
            Engine::Llamacpp => "llamacpp",
            Engine::Lmstudio => "lmstudio",
        }
    }

    /// The host port the engine is published on by default (docs/wire-format.md#llm-engines).
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Vllm => 8201,
            Engine::Ollama => 11434,
            Engine::Llamacpp => 8200,
            Engine::Lmstudio => 1234,
        }
    }

    /// The path that answers 200 once the engine can serve (docs/wire-format.md#llm-engines).
    pub fn readiness_path(self) -> &'static str {
        match self {
            Engine::Vllm => "/health",
            Engine::Ollama => "/api/tags",
            Engine::Llamacpp | Engine::Lmstudio => "/v1/models",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Engine {
    type Err = ComposeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        let found = match lower.as_str() {
            "vllm" => Engine::Vllm,
            "ollama" => Engine::Ollama,
            "llamacpp" | "llama.cpp" | "llama-cpp" => Engine::Llamacpp,
            "lmstudio" | "lm-studio" => Engine::Lmstudio,
            _ => return Err(ComposeError::UnknownService(s.to_string())),
        };
        Ok(found)
    }
}

impl<'de> serde::Deserialize<'de> for Engine {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

/// One service as the manifest asks for it (an entry of the manifest's `services:` list).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    /// `vllm`, `ollama`, `llamacpp` or `lmstudio`.
    #[serde(rename = "name")]
    pub engine: Engine,
    /// Replaces the engine's default image (a pinned tag, a mirror, or a local stand-in).
    pub image: Option<String>,
    /// The host port (default: the engine's, docs/wire-format.md#llm-engines).
    pub port: Option<u16>,
    /// The host address the port is published on (default 127.0.0.1).
    pub bind: Option<String>,
    /// The model the engine loads (vLLM: a Hugging Face id; llama.cpp: a GGUF file name).
    pub model: Option<String>,
    /// Reserve the NVIDIA GPUs; `None`: when this machine has an NVIDIA driver.
    pub gpu: Option<bool>,
}

impl ServiceSpec {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            image: None,
            port: None,
            bind: None,
            model: None,
            gpu: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port.unwrap_or(self.engine.default_port())
    }

    pub fn bind(&self) -> &str {
        self.bind.as_deref().unwrap_or("127.0.0.1")
    }

    /// Whether the compose GPU reservation is added.
    pub fn uses_gpu(&self) -> bool {
        self.gpu.unwrap_or_else(nvidia_present)
    }

    /// The readiness URL as seen from this machine.
    pub fn readiness_url(&self) -> String {
        let host = match self.bind() {
            "0.0.0.0" | "" => "127.0.0.1",
            "::" => "[::1]",
            h => h,
        };
        format!(
            "http://{host}:{}{}",
            self.port(),
            self.engine.readiness_path()
        )
    }

    /// The variables written to the service's `.env` file.
    pub fn env(&self) -> BTreeMap<&'static str, String> {
        let mut env = BTreeMap::new();
        env.insert("CITADEL_PORT", self.port().to_string());
        env.insert("CITADEL_BIND", self.bind().to_string());
        if let Some(i) = &self.image {
            env.insert("CITADEL_IMAGE", i.clone());
        }
        if let Some(m) = &self.model {
            env.insert("CITADEL_MODEL", m.clone());
        }
        env
    }
}

/// Whether an NVIDIA driver is loaded (its control device exists). Full GPU detection is the
/// platform module's; this is only the default for the compose GPU reservation.
pub fn nvidia_present() -> bool {
    std::path::Path::new("/dev/nvidiactl").exists()
}

/// What went wrong with a service.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("unknown service {0:?}: citadel runs vllm, ollama, llamacpp and lmstudio")]
    UnknownService(String),
    #[error("Docker Compose is not installed: neither `docker compose` (v2 plugin) nor `docker-compose` (v1) runs here; install docker.io and docker-compose (or the compose plugin)")]
    NoCompose,
    #[error("the Docker daemon is not reachable ({0}); start it (systemctl start docker) or check DOCKER_HOST and your permission on /var/run/docker.sock")]
    DaemonDown(String),
    #[error("port {port} on {bind} is taken by another process, so {engine} cannot publish on it; stop that process or set `port:` for this service in citadel.yaml")]
    PortTaken {
        engine: Engine,
        bind: String,
        port: u16,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{engine} did not become ready within {waited_s}s ({url}: {last})")]
    NotReady {
        engine: Engine,
        url: String,
        waited_s: u64,
        last: String,
    },
    #[error("writing the compose files in {path}: {source}")]
    Files {
        path: String,
        source: std::io::Error,
    },
    #[error("running {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
}

impl ComposeError {
    /// Whether trying again later can help (the daemon or the engine may come up; a missing
    /// tool, a bad name or a taken port need a person).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ComposeError::DaemonDown(_)
                | ComposeError::NotReady { .. }
                | ComposeError::Command { .. }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_with_their_aliases_and_unknown_names_are_named() {
        assert_eq!("llama.cpp".parse::<Engine>().unwrap(), Engine::Llamacpp);
        assert_eq!("VLLM".parse::<Engine>().unwrap(), Engine::Vllm);
        let err = "vlm".parse::<Engine>().unwrap_err().to_string();
        assert!(err.contains("\"vlm\"") && err.contains("ollama"), "{err}");
    }

    #[test]
    fn spec_defaults_follow_the_spec_ports() {
        let mut s = ServiceSpec::new(Engine::Vllm);
        assert_eq!(s.readiness_url(), "http://127.0.0.1:8201/health");
        s.port = Some(9000);
        s.bind = Some("0.0.0.0".into());
        assert_eq!(s.readiness_url(), "http://127.0.0.1:9000/health");
        assert_eq!(s.env()["CITADEL_PORT"], "9000");
        assert!(!s.env().contains_key("CITADEL_IMAGE"));
    }
}
