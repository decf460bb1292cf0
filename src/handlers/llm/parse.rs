//! Engine answers, parsed incrementally: pure functions over bytes, fed as they arrive from the
//! socket in chunks of any size (a chunk may end inside a line or inside a UTF-8 character).
//! [`StreamParser`] turns the bytes of a streamed answer into [`Step`]s (a token, the finish
//! reason, the usage, the end), for every [`Protocol`]: OpenAI-style SSE (`choices[0].text` or
//! `choices[0].delta.content`, `data: [DONE]`), llama.cpp `/completion` SSE (`content`,
//! `stop: true`) and Ollama newline-delimited JSON (`response` or `message.content`,
//! `done: true`). [`parse_whole`] reads a non-streamed answer; [`engine_message`] digs the
//! message out of an error body. This module never does I/O and never panics on bad input.

use serde_json::{json, Value};

use super::request::Protocol;

/// Token counts, normalised to the OpenAI names whatever the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

impl Usage {
    pub fn to_json(self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        })
    }
}

/// What one message of the stream said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// Generated text (empty pieces are dropped).
    pub text: Option<String>,
    pub finish_reason: Option<String>,
    pub usage: Option<Usage>,
    /// The engine said the answer is complete.
    pub done: bool,
}

/// Why a stream could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The engine reported an error inside the stream.
    #[error("the engine reported an error mid-stream: {0}")]
    Engine(String),
    /// Not the protocol's framing or JSON.
    #[error("malformed stream from the engine: {0}")]
    Malformed(String),
}

/// Splits bytes into complete lines (`\n` or `\r\n`); keeps a partial line for the next push.
#[derive(Debug, Default)]
struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    fn push(&mut self, bytes: &[u8], mut each: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.buf[start..].iter().position(|b| *b == b'\n') {
            let mut line = &self.buf[start..start + pos];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            each(line);
            start += pos + 1;
        }
        self.buf.drain(..start);
    }

    /// The bytes after the last newline.
    fn rest(&self) -> &[u8] {
        &self.buf
    }
}

/// Server-sent events: yields the `data` of each complete event (multi-line data joined with
/// `\n`); comments and other fields are skipped.
#[derive(Debug, Default)]
pub struct SseDecoder {
    lines: Lines,
    data: Option<String>,
}

impl SseDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let data = &mut self.data;
        self.lines.push(bytes, |line| {
            if line.is_empty() {
                if let Some(d) = data.take() {
                    out.push(d);
                }
                return;
            }
            let line = String::from_utf8_lossy(line);
            let (field, value) = match line.split_once(':') {
                Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                None => (line.as_ref(), ""),
            };
            if field == "data" {
                match data {
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => *data = Some(value.to_string()),
                }
            }
        });
        out
    }

    /// At the end of the body: an event whose lines are complete but that no blank line closed
    /// still counts; a line cut short does not (the stream was cut).
    pub fn finish(&mut self) -> Option<String> {
        if self.lines.rest().is_empty() {
            self.data.take()
        } else {
            None
        }
    }
}

/// Newline-delimited JSON: yields each non-empty line.
#[derive(Debug, Default)]
pub struct NdjsonDecoder {
    lines: Lines,
}

impl NdjsonDecoder {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        self.lines.push(bytes, |line| {
            let line = String::from_utf8_lossy(line);
            if !line.trim().is_empty() {
                out.push(line.into_owned());
            }
        });
        out
    }

    /// At the end of the body: a line without its newline was cut short; nothing is left.
    pub fn finish(&mut self) -> Option<String> {
        None
    }
}

fn u64_at(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.filter(|s| !s.is_empty()).map(str::to_string)
}

fn openai_usage(v: &Value) -> Option<Usage> {
    let u = v.get("usage").filter(|u| u.is_object())?;
    Some(Usage {
        prompt_tokens: u64_at(u, "prompt_tokens").unwrap_or(0),
        completion_tokens: u64_at(u, "completion_tokens").unwrap_or(0),
    })
}

/// The error an engine put in a JSON body, if that is what it is: OpenAI
/// `{"error": {"message"}}`, vLLM `{"object": "error", "message"}`, Ollama `{"error": "…"}`,
/// llama.cpp `{"error": {"code", "message", "type"}}`, FastAPI `{"detail": …}`.
pub fn engine_message(v: &Value) -> Option<String> {
    match v.get("error") {
        Some(Value::String(s)) => return Some(s.clone()),
        Some(e @ Value::Object(_)) => {
            return Some(
                e.get("message")
                    .and_then(Value::as_str)
                    .map_or_else(|| e.to_string(), str::to_string),
            )
        }
        _ => {}
    }
    if v.get("object").and_then(Value::as_str) == Some("error") {
        return Some(
            v.get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown engine error")
                .to_string(),
        );
    }
    v.get("detail").map(|d| match d {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// The llama.cpp finish reason in OpenAI words.
fn llama_finish(v: &Value) -> String {
    match v.get("stop_type").and_then(Value::as_str) {
        Some("limit") => "length".into(),
        Some("eos" | "word") => "stop".into(),
        Some(other) => other.into(),
        None if v.get("stopped_limit").and_then(Value::as_bool) == Some(true) => "length".into(),
        None => "stop".into(),
    }
}

/// One message of the given protocol.
pub fn interpret(protocol: Protocol, msg: &str) -> Result<Step, ParseError> {
    if matches!(protocol, Protocol::OpenAiChat | Protocol::OpenAiCompletions)
        && msg.trim() == "[DONE]"
    {
        return Ok(Step {
            done: true,
            ..Step::default()
        });
    }
    let v: Value = serde_json::from_str(msg).map_err(|e| {
        let shown: String = msg.chars().take(120).collect();
        ParseError::Malformed(format!("{e} in `{shown}`"))
    })?;
    if let Some(m) = engine_message(&v) {
        return Err(ParseError::Engine(m));
    }
    if !v.is_object() {
        return Err(ParseError::Malformed(format!(
            "expected a JSON object, got {v}"
        )));
    }
    let step = match protocol {
        Protocol::OpenAiCompletions | Protocol::OpenAiChat => {
            let choice = v.get("choices").and_then(|c| c.get(0));
            let text = choice.and_then(|c| match protocol {
                Protocol::OpenAiChat => c.get("delta").and_then(|d| d.get("content")),
                _ => c.get("text"),
            });
            if v.get("choices").is_none() {
                return Err(ParseError::Malformed(format!("no `choices` in {v}")));
            }
            Step {
                text: non_empty(text.and_then(Value::as_str)),
                finish_reason: non_empty(
                    choice
                        .and_then(|c| c.get("finish_reason"))
                        .and_then(Value::as_str),
                ),
                usage: openai_usage(&v),
                done: false,
            }
        }
        Protocol::LlamaCompletion => {
            let stop = v.get("stop").and_then(Value::as_bool).unwrap_or(false);
            if v.get("content").is_none() && !stop {
                return Err(ParseError::Malformed(format!("no `content` in {v}")));
            }
            Step {
                text: non_empty(v.get("content").and_then(Value::as_str)),
                finish_reason: stop.then(|| llama_finish(&v)),
                usage: stop.then(|| Usage {
                    prompt_tokens: u64_at(&v, "tokens_evaluated").unwrap_or(0),
                    completion_tokens: u64_at(&v, "tokens_predicted").unwrap_or(0),
                }),
                done: stop,
            }
        }
        Protocol::OllamaGenerate | Protocol::OllamaChat => {
            let done = v.get("done").and_then(Value::as_bool).unwrap_or(false);
            let text = match protocol {
                Protocol::OllamaChat => v.get("message").and_then(|m| m.get("content")),
                _ => v.get("response"),
            };
            if text.is_none() && !done {
                return Err(ParseError::Malformed(format!("no generated text in {v}")));
            }
            Step {
                text: non_empty(text.and_then(Value::as_str)),
                finish_reason: done.then(|| {
                    non_empty(v.get("done_reason").and_then(Value::as_str))
                        .unwrap_or_else(|| "stop".into())
                }),
                usage: done.then(|| Usage {
                    prompt_tokens: u64_at(&v, "prompt_eval_count").unwrap_or(0),
                    completion_tokens: u64_at(&v, "eval_count").unwrap_or(0),
                }),
                done,
            }
        }
    };
    Ok(step)
}

/// Parses a streamed answer of one protocol as its bytes arrive.
#[derive(Debug)]
pub struct StreamParser {
    protocol: Protocol,
    sse: SseDecoder,
    ndjson: NdjsonDecoder,
}

impl StreamParser {
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            sse: SseDecoder::default(),
            ndjson: NdjsonDecoder::default(),
        }
    }

    fn is_sse(&self) -> bool {
        !matches!(
            self.protocol,
            Protocol::OllamaChat | Protocol::OllamaGenerate
        )
    }

    /// The steps completed by these bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Step>, ParseError> {
        let msgs = if self.is_sse() {
            self.sse.push(bytes)
        } else {
            self.ndjson.push(bytes)
        };
        msgs.iter().map(|m| interpret(self.protocol, m)).collect()
    }

    /// The body ended: whatever was left unterminated.
    pub fn finish(&mut self) -> Result<Option<Step>, ParseError> {
        let last = if self.is_sse() {
            self.sse.finish()
        } else {
            self.ndjson.finish()
        };
        last.map(|m| interpret(self.protocol, &m)).transpose()
    }
}

/// The whole answer of a non-streamed call: `(content, finish_reason, usage)`.
pub fn parse_whole(
    protocol: Protocol,
    body: &[u8],
) -> Result<(String, Option<String>, Option<Usage>), ParseError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ParseError::Malformed(format!("the answer is not JSON: {e}")))?;
    if let Some(m) = engine_message(&v) {
        return Err(ParseError::Engine(m));
    }
    match protocol {
        Protocol::OpenAiCompletions | Protocol::OpenAiChat => {
            let choice = v
                .get("choices")
                .and_then(|c| c.get(0))
                .ok_or_else(|| ParseError::Malformed(format!("no `choices` in {v}")))?;
            let text = match protocol {
                Protocol::OpenAiChat => choice.get("message").and_then(|m| m.get("content")),
                _ => choice.get("text"),
            };
            Ok((
                text.and_then(Value::as_str).unwrap_or("").to_string(),
                non_empty(choice.get("finish_reason").and_then(Value::as_str)),
                openai_usage(&v),
            ))
        }
        _ => {
            let step = interpret(protocol, &v.to_string())?;
            Ok((
                step.text.unwrap_or_default(),
                step.finish_reason,
                step.usage,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The exact bytes each engine sends for `tokens` (as in the engines' own servers).
    pub fn encode(protocol: Protocol, tokens: &[String]) -> Vec<u8> {
        let mut out = String::new();
        match protocol {
            Protocol::OpenAiChat | Protocol::OpenAiCompletions => {
                for t in tokens {
                    let choice = if protocol == Protocol::OpenAiChat {
                        json!({"index": 0, "delta": {"content": t}, "finish_reason": null})
                    } else {
                        json!({"index": 0, "text": t, "finish_reason": null})
                    };
                    out += &format!("data: {}\n\n", json!({"id": "x", "choices": [choice]}));
                }
                out += "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"text\":\"\",\"finish_reason\":\"length\"}]}\r\n\r\n";
                out += "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\n";
                out += "data: [DONE]\n\n";
            }
            Protocol::LlamaCompletion => {
                for t in tokens {
                    out += &format!("data: {}\n\n", json!({"content": t, "stop": false}));
                }
                out += "data: {\"content\":\"\",\"stop\":true,\"stop_type\":\"limit\",\"tokens_predicted\":4,\"tokens_evaluated\":3}\n\n";
            }
            Protocol::OllamaGenerate | Protocol::OllamaChat => {
                for t in tokens {
                    let v = if protocol == Protocol::OllamaChat {
                        json!({"model": "m", "message": {"role": "assistant", "content": t}, "done": false})
                    } else {
                        json!({"model": "m", "response": t, "done": false})
                    };
                    out += &format!("{v}\n");
                }
                out += "{\"model\":\"m\",\"response\":\"\",\"done\":true,\"done_reason\":\"length\",\"prompt_eval_count\":3,\"eval_count\":4}\n";
            }
        }
        out.into_bytes()
    }

    const PROTOCOLS: [Protocol; 5] = [
        Protocol::OpenAiCompletions,
        Protocol::OpenAiChat,
        Protocol::LlamaCompletion,
        Protocol::OllamaGenerate,
        Protocol::OllamaChat,
    ];

    fn run(protocol: Protocol, bytes: &[u8], cuts: &[usize]) -> Result<Vec<Step>, ParseError> {
        let mut p = StreamParser::new(protocol);
        let mut steps = Vec::new();
        let mut at = 0;
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        for c in cuts.into_iter().chain([bytes.len()]) {
            steps.extend(p.push(&bytes[at..c])?);
            at = c;
        }
        steps.extend(p.finish()?);
        Ok(steps)
    }

    proptest! {
        /// Whatever the chunking of the bytes, every protocol yields the tokens in order, then
        /// the finish reason, the usage and the end.
        #[test]
        fn tokens_survive_any_chunking(
            tokens in proptest::collection::vec("\\PC{1,6}", 0..20),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            for protocol in PROTOCOLS {
                let bytes = encode(protocol, &tokens);
                let steps = run(protocol, &bytes, &cuts).unwrap();
                let text: Vec<String> = steps.iter().filter_map(|s| s.text.clone()).collect();
                prop_assert_eq!(&text, &tokens);
                prop_assert!(steps.last().unwrap().done);
                let finish: Vec<_> = steps.iter().filter_map(|s| s.finish_reason.clone()).collect();
                prop_assert_eq!(finish, vec!["length".to_string()]);
                let usage = steps.iter().find_map(|s| s.usage).unwrap();
                prop_assert_eq!(usage, Usage { prompt_tokens: 3, completion_tokens: 4 });
            }
        }

        /// Arbitrary bytes are an error or steps, never a panic.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for protocol in PROTOCOLS {
                let _ = run(protocol, &bytes, &[bytes.len() / 2]);
            }
        }

        /// A stream cut anywhere never claims to be complete unless the final message arrived.
        #[test]
        fn a_cut_stream_is_not_done(
            tokens in proptest::collection::vec("[a-z ]{1,4}", 1..10),
            cut in any::<usize>(),
        ) {
            for protocol in PROTOCOLS {
                let bytes = encode(protocol, &tokens);
                let end = encode(protocol, &[]);
                let cut = cut % (bytes.len() - end.len());
                let steps = run(protocol, &bytes[..cut], &[]).unwrap();
                prop_assert!(!steps.iter().any(|s| s.done));
            }
        }
    }

    #[test]
    fn errors_in_the_stream_and_in_bodies() {
        let e = interpret(Protocol::OllamaChat, r#"{"error":"model 'x' not found"}"#).unwrap_err();
        assert_eq!(e, ParseError::Engine("model 'x' not found".into()));
        let body = r#"{"object":"error","message":"max_tokens too big","type":"BadRequestError","param":null,"code":400}"#;
        assert_eq!(
            engine_message(&serde_json::from_str(body).unwrap()).unwrap(),
            "max_tokens too big"
        );
        let e = interpret(Protocol::OpenAiChat, "{not json").unwrap_err();
        assert!(matches!(e, ParseError::Malformed(_)));
        let e = interpret(
            Protocol::LlamaCompletion,
            r#"{"error":{"code":500,"message":"slot died","type":"server_error"}}"#,
        )
        .unwrap_err();
        assert_eq!(e, ParseError::Engine("slot died".into()));
    }

    #[test]
    fn sse_comments_multiline_data_and_old_llama_fields() {
        let mut d = SseDecoder::default();
        assert_eq!(
            d.push(b": ping\n\nevent: x\ndata: a\ndata: b\n\n"),
            vec!["a\nb"]
        );
        let s = interpret(
            Protocol::LlamaCompletion,
            r#"{"content":"","stop":true,"stopped_limit":true,"tokens_predicted":2}"#,
        )
        .unwrap();
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
    }

    #[test]
    fn whole_answers() {
        let body = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#;
        let (c, f, u) = parse_whole(Protocol::OpenAiChat, body).unwrap();
        assert_eq!((c.as_str(), f.as_deref()), ("hi there", Some("stop")));
        assert_eq!(u.unwrap().completion_tokens, 2);
        let body =
            br#"{"model":"m","response":"ok","done":true,"done_reason":"stop","eval_count":1}"#;
        assert_eq!(parse_whole(Protocol::OllamaGenerate, body).unwrap().0, "ok");
    }
}
