//! What an `llm_inference` job asks for, and how each engine is asked for it (docs/wire-format.md#llm-engines). Parses
//! the payload (`backend`, `model`, `prompt` or `messages`, `max_tokens`, `temperature`,
//! `top_p`, `stop`, `stream`; numbers and booleans may arrive as strings, as the Nexus wire
//! format carries only strings) and translates it into one engine call: the path, the JSON body
//! and the wire protocol of the answer. Pure: this module never does I/O.

use serde_json::{json, Map, Value};

/// The inference engines a job can name in `backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Backend {
    Vllm,
    Sglang,
    Ollama,
    LlamaCpp,
}

impl Backend {
    pub const ALL: [Backend; 4] = [
        Backend::Vllm,
        Backend::Sglang,
        Backend::Ollama,
        Backend::LlamaCpp,
    ];

    /// `vllm`, `sglang`, `ollama`, `llamacpp` (also `llama.cpp`, `llama_cpp`, `llama-cpp`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "vllm" => Some(Backend::Vllm),
            "sglang" => Some(Backend::Sglang),
            "ollama" => Some(Backend::Ollama),
            "llamacpp" | "llama.cpp" | "llama_cpp" | "llama-cpp" => Some(Backend::LlamaCpp),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Vllm => "vllm",
            Backend::Sglang => "sglang",
            Backend::Ollama => "ollama",
            Backend::LlamaCpp => "llamacpp",
        }
    }

    /// The engine's default base URL on this host (docs/wire-format.md#llm-engines ports).
    pub fn default_url(self) -> &'static str {
        match self {
            Backend::Vllm => "http://127.0.0.1:8201",
            Backend::Sglang => "http://127.0.0.1:30000",
            Backend::Ollama => "http://127.0.0.1:11434",
            Backend::LlamaCpp => "http://127.0.0.1:8200",
        }
    }

    /// The path that answers 200 once the engine can serve.
    pub fn readiness_path(self) -> &'static str {
        match self {
            Backend::Vllm | Backend::Sglang => "/health",
            Backend::Ollama => "/api/tags",
            Backend::LlamaCpp => "/v1/models",
        }
    }
}

/// How an engine frames its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// OpenAI `/v1/completions`: SSE, `choices[0].text`, `data: [DONE]`.
    OpenAiCompletions,
    /// OpenAI `/v1/chat/completions`: SSE, `choices[0].delta.content`, `data: [DONE]`.
    OpenAiChat,
    /// llama.cpp `/completion`: SSE, `content`, the last event has `stop: true`.
    LlamaCompletion,
    /// Ollama `/api/generate`: newline-delimited JSON, `response`, the last line `done: true`.
    OllamaGenerate,
    /// Ollama `/api/chat`: newline-delimited JSON, `message.content`, the last line `done: true`.
    OllamaChat,
}

/// The prompt: plain text, or chat messages (`[{role, content}, …]`).
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Prompt(String),
    Messages(Vec<Value>),
}

/// An `llm_inference` payload, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmRequest {
    pub backend: Backend,
    pub model: Option<String>,
    pub input: Input,
    pub max_tokens: u64,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// `max_tokens` when the payload has none (docs/wire-format.md#llm-engines).
pub const DEFAULT_MAX_TOKENS: u64 = 512;

/// One HTTP request to an engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineCall {
    pub path: &'static str,
    pub body: Value,
    pub protocol: Protocol,
    pub stream: bool,
}

fn number(payload: &Map<String, Value>, key: &str) -> Result<Option<f64>, String> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a number, got `{s}`")),
        Some(other) => Err(format!("`{key}` must be a number, got {other}")),
    }
}

fn boolean(payload: &Map<String, Value>, key: &str, default: bool) -> Result<bool, String> {
    match payload.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => Ok(true),
            "false" | "0" | "no" => Ok(false),
            "" => Ok(default),
            _ => Err(format!("`{key}` must be true or false, got `{s}`")),
        },
        Some(other) => Err(format!("`{key}` must be true or false, got {other}")),
    }
}

/// A value that may be JSON encoded in a string (the Nexus payload carries only strings).
fn decoded(v: &Value) -> Value {
    match v {
        Value::String(s) if s.trim_start().starts_with(['[', '{']) => {
            serde_json::from_str(s).unwrap_or_else(|_| v.clone())
        }
        _ => v.clone(),
    }
}

impl LlmRequest {
    /// Validates a job payload; the error says which field is wrong and how.
    pub fn from_payload(payload: &Value) -> Result<Self, String> {
        let Some(p) = payload.as_object() else {
            return Err("the payload must be a JSON object".into());
        };
        let backend = match p.get("backend").and_then(Value::as_str) {
            None | Some("") => Backend::Vllm,
            Some(b) => Backend::parse(b).ok_or_else(|| {
                format!("unknown `backend` `{b}`; supported: vllm, sglang, ollama, llamacpp")
            })?,
        };
        let model = p
            .get("model")
            .and_then(Value::as_str)
            .filter(|m| !m.is_empty())
            .map(str::to_string);
        let input = match (p.get("messages").map(decoded), p.get("prompt")) {
            (Some(Value::Array(m)), _) if !m.is_empty() => {
                if let Some(bad) = m
                    .iter()
                    .find(|m| !m.is_object() || !m.get("role").is_some_and(Value::is_string))
                {
                    return Err(format!(
                        "each of `messages` must be an object with a `role` and a `content`, got {bad}"
                    ));
                }
                Input::Messages(m)
            }
            (Some(Value::Array(_)), None) => return Err("`messages` is empty".into()),
            (Some(Value::Null) | None, Some(Value::String(s))) => Input::Prompt(s.clone()),
            (Some(Value::Array(_)), Some(Value::String(s))) => Input::Prompt(s.clone()),
            (Some(other), _) if !other.is_null() => {
                return Err(format!(
                    "`messages` must be an array of messages, got {other}"
                ))
            }
            (_, Some(other)) => return Err(format!("`prompt` must be a string, got {other}")),
            _ => return Err("an llm_inference job needs `prompt` (text) or `messages`".into()),
        };
        let max_tokens = match number(p, "max_tokens")? {
            None => DEFAULT_MAX_TOKENS,
            Some(n) if n >= 1.0 && n.fract() == 0.0 => n as u64,
            Some(n) => return Err(format!("`max_tokens` must be a whole number ≥ 1, got {n}")),
        };
        let temperature = number(p, "temperature")?;
        if temperature.is_some_and(|t| t < 0.0) {
            return Err("`temperature` must not be negative".into());
        }
        let top_p = number(p, "top_p")?;
        if top_p.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err("`top_p` must be between 0 and 1".into());
        }
        let stop = match p.get("stop").map(decoded) {
            None | Some(Value::Null) => vec![],
            Some(Value::String(s)) => vec![s],
            Some(Value::Array(a)) => a
                .iter()
                .map(|s| s.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or("`stop` must be a string or an array of strings")?,
            Some(other) => return Err(format!("`stop` must be a string or strings, got {other}")),
        };
        let stream = boolean(p, "stream", true)?;
        if backend == Backend::Ollama && model.is_none() {
            return Err("ollama needs `model` (e.g. \"llama3.2\")".into());
        }
        Ok(Self {
            backend,
            model,
            input,
            max_tokens,
            temperature,
            top_p,
            stop,
            stream,
        })
    }

    /// `temperature`, `top_p` and `stop` where the engine takes them (the same names in every
    /// API: the top level for OpenAI and llama.cpp, `options` for Ollama).
    fn sampling(&self, into: &mut Map<String, Value>) {
        if let Some(t) = self.temperature {
            into.insert("temperature".into(), t.into());
        }
        if let Some(t) = self.top_p {
            into.insert("top_p".into(), t.into());
        }
        if !self.stop.is_empty() {
            into.insert("stop".into(), json!(self.stop));
        }
    }

    /// The engine call for this request.
    pub fn to_call(&self) -> EngineCall {
        let mut body = Map::new();
        body.insert("stream".into(), self.stream.into());
        let input = match &self.input {
            Input::Prompt(p) => ("prompt", Value::String(p.clone())),
            Input::Messages(m) => ("messages", Value::Array(m.clone())),
        };
        let chat = matches!(self.input, Input::Messages(_));
        let (path, protocol) = match self.backend {
            Backend::Ollama => {
                let mut options = Map::new();
                options.insert("num_predict".into(), self.max_tokens.into());
                self.sampling(&mut options);
                body.insert("model".into(), json!(self.model));
                body.insert("options".into(), Value::Object(options));
                if chat {
                    ("/api/chat", Protocol::OllamaChat)
                } else {
                    ("/api/generate", Protocol::OllamaGenerate)
                }
            }
            Backend::LlamaCpp if !chat => {
                body.insert("n_predict".into(), self.max_tokens.into());
                self.sampling(&mut body);
                ("/completion", Protocol::LlamaCompletion)
            }
            // vLLM, SGLang, and llama.cpp for chat: the OpenAI API.
            _ => {
                if let Some(m) = &self.model {
                    body.insert("model".into(), m.clone().into());
                }
                body.insert("max_tokens".into(), self.max_tokens.into());
                if self.stream {
                    body.insert("stream_options".into(), json!({"include_usage": true}));
                }
                self.sampling(&mut body);
                if chat {
                    ("/v1/chat/completions", Protocol::OpenAiChat)
                } else {
                    ("/v1/completions", Protocol::OpenAiCompletions)
                }
            }
        };
        body.insert(input.0.into(), input.1);
        EngineCall {
            path,
            body: Value::Object(body),
            protocol,
            stream: self.stream,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(p: Value) -> Result<LlmRequest, String> {
        LlmRequest::from_payload(&p)
    }

    #[test]
    fn defaults_and_string_values() {
        let r = req(json!({"prompt": "hi"})).unwrap();
        assert_eq!(r.backend, Backend::Vllm);
        assert_eq!(r.max_tokens, DEFAULT_MAX_TOKENS);
        assert!(r.stream);
        let r = req(
            json!({"prompt": "hi", "max_tokens": "7", "temperature": "0.5",
            "stream": "false", "stop": "[\"\\n\"]", "backend": "llama.cpp"}),
        )
        .unwrap();
        assert_eq!(
            (r.backend, r.max_tokens, r.temperature, r.stream),
            (Backend::LlamaCpp, 7, Some(0.5), false)
        );
        assert_eq!(r.stop, vec!["\n"]);
        let r = req(json!({"messages": "[{\"role\":\"user\",\"content\":\"x\"}]"})).unwrap();
        assert!(matches!(r.input, Input::Messages(ref m) if m.len() == 1));
    }

    #[test]
    fn bad_payloads_say_what_is_wrong() {
        for (p, needle) in [
            (json!({}), "needs `prompt`"),
            (
                json!({"prompt": "x", "backend": "gpt"}),
                "unknown `backend`",
            ),
            (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"prompt": "x", "max_tokens": "lots"}), "max_tokens"),
            (json!({"prompt": "x", "top_p": 2}), "top_p"),
            (json!({"messages": [1]}), "messages"),
            (json!({"messages": []}), "empty"),
            (json!({"prompt": 3}), "prompt"),
            (json!({"prompt": "x", "backend": "ollama"}), "model"),
            (json!({"prompt": "x", "stop": [1]}), "stop"),
        ] {
            let e = req(p.clone()).unwrap_err();
            assert!(e.contains(needle), "{p}: {e}");
        }
    }

    #[test]
    fn each_engine_gets_its_own_api() {
        let chat = json!([{"role": "user", "content": "hi"}]);
        let c = req(json!({"messages": chat, "max_tokens": 3, "model": "m", "top_p": 0.9}))
            .unwrap()
            .to_call();
        assert_eq!(
            (c.path, c.protocol),
            ("/v1/chat/completions", Protocol::OpenAiChat)
        );
        assert_eq!(c.body["max_tokens"], 3);
        assert_eq!(c.body["stream_options"]["include_usage"], true);
        let c = req(json!({"prompt": "p", "backend": "sglang"}))
            .unwrap()
            .to_call();
        assert_eq!(
            (c.path, c.protocol),
            ("/v1/completions", Protocol::OpenAiCompletions)
        );
        assert!(c.body.get("model").is_none());
        let c = req(json!({"prompt": "p", "backend": "llamacpp", "max_tokens": 9, "stop": "."}))
            .unwrap()
            .to_call();
        assert_eq!(
            (c.path, c.protocol),
            ("/completion", Protocol::LlamaCompletion)
        );
        assert_eq!(
            (c.body["n_predict"].clone(), c.body["stop"].clone()),
            (json!(9), json!(["."]))
        );
        let c = req(json!({"messages": chat, "backend": "llamacpp"}))
            .unwrap()
            .to_call();
        assert_eq!(c.path, "/v1/chat/completions");
        let c = req(json!({"prompt": "p", "backend": "ollama", "model": "m", "temperature": 0}))
            .unwrap()
            .to_call();
        assert_eq!(
            (c.path, c.protocol),
            ("/api/generate", Protocol::OllamaGenerate)
        );
        assert_eq!(
            c.body["options"],
            json!({"num_predict": 512, "temperature": 0.0})
        );
        let c = req(json!({"messages": chat, "backend": "ollama", "model": "m"}))
            .unwrap()
            .to_call();
        assert_eq!((c.path, c.protocol), ("/api/chat", Protocol::OllamaChat));
    }
}
