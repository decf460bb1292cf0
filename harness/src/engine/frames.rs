//! The exact messages of one stand-in answer, byte for byte as each engine frames them: the
//! OpenAI SSE chunks (role delta, tokens, finish, usage, `[DONE]`), llama.cpp's SSE messages and
//! Ollama's JSON lines, streamed or whole. Formatting only; the pace and the recording are the
//! server's ([`super`]).

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{epoch_nanos, Api};

/// The exact messages of one answer.
#[derive(Debug, Clone)]
pub(super) struct Frames {
    pub(super) api: Api,
    model: String,
    id: String,
    created: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
    finish: &'static str,
    include_usage: bool,
}

/// Adds the fields of `extra` (an object) to `v`.
fn merge(v: &mut Value, extra: Value) {
    if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
        v.extend(extra);
    }
}

fn sse(v: &Value) -> String {
    format!("data: {v}\n\n")
}

impl Frames {
    /// The frames of an answer of `n` tokens to `req`, which asked for at most `max`.
    pub(super) fn new(api: Api, req: &Value, n: usize, max: usize) -> Self {
        Self {
            api,
            model: req["model"].as_str().unwrap_or("tiny").to_string(),
            id: format!("{:x}", epoch_nanos()),
            created: now_secs(),
            prompt_tokens: words(&req["prompt"]) + words(&req["messages"]),
            completion_tokens: n as u64,
            finish: if n == max { "length" } else { "stop" },
            include_usage: req["stream_options"]["include_usage"]
                .as_bool()
                .unwrap_or(false),
        }
    }

    fn usage(&self) -> Value {
        json!({"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + self.completion_tokens, "completion_tokens": self.completion_tokens})
    }

    fn ollama(&self, text: &str, done: bool) -> Value {
        let created_at = citadel_transports::events::rfc3339(SystemTime::now());
        let mut v = match self.api {
            Api::OllamaChat => {
                json!({"model": self.model, "created_at": created_at, "message": {"role": "assistant", "content": text}, "done": done})
            }
            _ => {
                json!({"model": self.model, "created_at": created_at, "response": text, "done": done})
            }
        };
        if done {
            let extra = json!({"done_reason": self.finish, "total_duration": 1_000_000, "load_duration": 1000,
                "prompt_eval_count": self.prompt_tokens, "prompt_eval_duration": 1000,
                "eval_count": self.completion_tokens, "eval_duration": 1000});
            merge(&mut v, extra);
            if self.api == Api::OllamaGenerate {
                v["context"] = json!([1, 2, 3]);
            }
        }
        v
    }

    fn llama(&self, text: &str, stop: bool, predicted: u64) -> Value {
        let mut v = json!({"index": 0, "content": text, "tokens": [], "stop": stop, "id_slot": 0,
            "tokens_predicted": predicted, "tokens_evaluated": self.prompt_tokens});
        if stop {
            let extra = json!({"model": self.model, "generation_settings": {"n_predict": self.completion_tokens},
                "has_new_line": false, "truncated": false,
                "stop_type": if self.finish == "length" { "limit" } else { "eos" }, "stopping_word": "",
                "tokens_cached": self.prompt_tokens + predicted,
                "timings": {"prompt_n": self.prompt_tokens, "predicted_n": predicted}});
            merge(&mut v, extra);
        }
        v
    }

    fn openai_chunk(&self, choice: Value) -> Value {
        let (prefix, object) = match self.api {
            Api::Chat => ("chatcmpl-", "chat.completion.chunk"),
            _ => ("cmpl-", "text_completion"),
        };
        json!({"id": format!("{prefix}{}", self.id), "object": object, "created": self.created,
            "model": self.model, "choices": [choice]})
    }

    /// What precedes the first token (the chat role delta).
    pub(super) fn opening(&self) -> String {
        match self.api {
            Api::Chat => sse(&self.openai_chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
            )),
            _ => String::new(),
        }
    }

    pub(super) fn token(&self, text: &str) -> String {
        match self.api {
            Api::Completions => sse(&self.openai_chunk(
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": null, "stop_reason": null}),
            )),
            Api::Chat => sse(&self.openai_chunk(
                json!({"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}),
            )),
            Api::Llama => sse(&self.llama(text, false, 0)),
            Api::OllamaGenerate | Api::OllamaChat => format!("{}\n", self.ollama(text, false)),
        }
    }

    pub(super) fn closing(&self) -> String {
        match self.api {
            Api::Completions | Api::Chat => {
                let choice = if self.api == Api::Chat {
                    json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": self.finish, "stop_reason": null})
                } else {
                    json!({"index": 0, "text": "", "logprobs": null, "finish_reason": self.finish, "stop_reason": null})
                };
                let mut out = sse(&self.openai_chunk(choice));
                if self.include_usage {
                    let mut u = self.openai_chunk(json!(null));
                    u["choices"] = json!([]);
                    u["usage"] = self.usage();
                    out += &sse(&u);
                }
                out + "data: [DONE]\n\n"
            }
            Api::Llama => sse(&self.llama("", true, self.completion_tokens)),
            Api::OllamaGenerate | Api::OllamaChat => format!("{}\n", self.ollama("", true)),
        }
    }

    /// A non-streamed answer.
    pub(super) fn whole(&self, content: &str) -> Value {
        match self.api {
            Api::Completions => {
                json!({"id": format!("cmpl-{}", self.id), "object": "text_completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "text": content, "logprobs": null, "finish_reason": self.finish, "stop_reason": null}], "usage": self.usage()})
            }
            Api::Chat => {
                json!({"id": format!("chatcmpl-{}", self.id), "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": self.finish, "stop_reason": null}], "usage": self.usage()})
            }
            Api::Llama => self.llama(content, true, self.completion_tokens),
            Api::OllamaGenerate | Api::OllamaChat => {
                let mut v = self.ollama(content, true);
                v["done"] = json!(true);
                v
            }
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whitespace-separated words of a prompt, or of the messages' contents.
fn words(v: &Value) -> u64 {
    match v {
        Value::String(s) => s.split_whitespace().count() as u64,
        Value::Array(a) => a.iter().map(|m| words(&m["content"])).sum(),
        _ => 0,
    }
}
