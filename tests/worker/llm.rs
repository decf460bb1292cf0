//! `llm_inference` end to end: a producer enqueues in the wire format, the real `citadel work`
//! process calls stand-in engines (real HTTP servers on loopback speaking each engine's protocol
//! byte for byte, `citadel_harness::engine`), and the test reads the job's events from Redis:
//! tokens as numbered chunks, the result, resumption by a late reader, cancellation and deadlines
//! that close the engine connection, and every kind of engine failure as a clear error.

use std::time::{Duration, Instant};

use citadel_harness::engine::{EngineScript, FakeEngine};
use citadel_harness::redis::Server;
use futures_util::StreamExt as _;
use serde_json::{json, Value};

use crate::support::worker::*;

const WAIT: Duration = Duration::from_secs(20);

fn engine_flags(pairs: &[(&str, &FakeEngine)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(name, e)| ["--engine".to_string(), format!("{name}={}", e.url())])
        .collect()
}

fn start(server: &Server, dir: &std::path::Path, flags: &[String]) -> Worker {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Worker::start(server, dir, &flags)
}

/// The chunks of a job's events: their contents, after checking the indexes run 0, 1, 2, …
fn chunks(evs: &[Value]) -> Vec<String> {
    let chunks: Vec<&Value> = evs.iter().filter(|e| e["type"] == "chunk").collect();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(
            c["data"]["index"], i as u64,
            "chunk indexes are consecutive: {c}"
        );
    }
    chunks
        .iter()
        .map(|c| c["data"]["content"].as_str().unwrap().to_string())
        .collect()
}

fn last_error(evs: &[Value]) -> (String, bool) {
    let e = evs
        .iter()
        .rev()
        .find(|e| e["type"] == "error")
        .expect("an error event");
    (
        e["data"]["error"].as_str().unwrap().to_string(),
        e["data"]["recoverable"].as_bool().unwrap(),
    )
}

#[tokio::test]
async fn every_engine_streams_numbered_tokens_and_returns_content_finish_reason_and_usage() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let engine = FakeEngine::start(EngineScript {
        token_interval: Duration::from_millis(2),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let flags = engine_flags(&[
        ("vllm", &engine),
        ("sglang", &engine),
        ("llamacpp", &engine),
        ("ollama", &engine),
    ]);
    let mut flags = flags;
    flags.extend(["--concurrency".into(), "4".into()]);
    let w = start(&server, dir.path(), &flags);

    // A subscriber that listens before the job is enqueued sees the whole sequence live.
    let client = redis::Client::open(server.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("stream:v1:llm-live").await.unwrap();

    let chat = json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "say hello"}]);
    let jobs = [
        (
            "llm-live",
            json!({"prompt": "say hello", "max_tokens": 64, "temperature": 0.2}),
            "/v1/completions",
        ),
        (
            "llm-vllm-chat",
            json!({"messages": chat, "model": "tiny", "top_p": 0.9, "stop": ["\n\n"]}),
            "/v1/chat/completions",
        ),
        (
            "llm-sglang",
            json!({"backend": "sglang", "prompt": "say hello"}),
            "/v1/completions",
        ),
        (
            "llm-llama",
            json!({"backend": "llamacpp", "prompt": "say hello", "max_tokens": "64"}),
            "/completion",
        ),
        (
            "llm-llama-chat",
            json!({"backend": "llamacpp", "messages": chat}),
            "/v1/chat/completions",
        ),
        (
            "llm-ollama",
            json!({"backend": "ollama", "model": "tiny", "prompt": "say hello"}),
            "/api/generate",
        ),
        (
            "llm-ollama-chat",
            json!({"backend": "ollama", "model": "tiny", "messages": chat}),
            "/api/chat",
        ),
    ];
    for (id, payload, _) in &jobs {
        submit(&mut c, id, "llm_inference", payload.clone()).await;
    }
    // A request for fewer tokens than the engine has ends with `length`.
    submit(
        &mut c,
        "llm-short",
        "llm_inference",
        json!({"prompt": "x", "max_tokens": 2, "backend": "ollama", "model": "tiny"}),
    )
    .await;
    // Not streamed: the engine answers once, the result is the same shape, no chunks.
    submit(
        &mut c,
        "llm-whole",
        "llm_inference",
        json!({"prompt": "x", "stream": false}),
    )
    .await;

    let mut live = Vec::new();
    let mut messages = pubsub.on_message();
    while !live.iter().any(|e: &Value| e["type"] == "end") {
        let msg = tokio::time::timeout(WAIT, messages.next())
            .await
            .expect("live events")
            .unwrap();
        live.push(serde_json::from_str::<Value>(&msg.get_payload::<String>().unwrap()).unwrap());
    }
    assert_eq!(
        types(&live),
        ["claimed", "start", "chunk", "chunk", "chunk", "chunk", "end"]
    );

    for (id, _, path) in &jobs {
        let evs = wait_for(&mut c, id, "end", WAIT).await;
        let text = chunks(&evs);
        assert_eq!(text, ["Hello", ",", " world", "!"], "{id}");
        let end = &evs.last().unwrap()["data"]["result"];
        assert_eq!(end["content"], "Hello, world!", "{id}");
        assert_eq!(end["finish_reason"], "stop", "{id}");
        assert_eq!(end["usage"]["completion_tokens"], 4, "{id}: {end}");
        assert_eq!(
            end["usage"]["total_tokens"].as_u64(),
            Some(end["usage"]["prompt_tokens"].as_u64().unwrap() + 4),
            "{id}"
        );
        assert!(
            engine.served().iter().any(|s| s.path == *path),
            "{id} went to {path}"
        );
    }
    let short = wait_for(&mut c, "llm-short", "end", WAIT).await;
    assert_eq!(chunks(&short), ["Hello", ","]);
    assert_eq!(
        short.last().unwrap()["data"]["result"]["finish_reason"],
        "length"
    );
    let whole = wait_for(&mut c, "llm-whole", "end", WAIT).await;
    assert!(chunks(&whole).is_empty());
    assert_eq!(
        whole.last().unwrap()["data"]["result"]["content"],
        "Hello, world!"
    );

    // The translation each engine received.
    let served = engine.served();
    let body_of = |path: &str, key: &str| {
        served
            .iter()
            .find(|s| s.path == path && s.body.get(key).is_some())
            .map(|s| s.body.clone())
            .unwrap()
    };
    let b = body_of("/v1/completions", "temperature");
    assert_eq!(
        (b["max_tokens"].clone(), b["stream"].clone()),
        (json!(64), json!(true))
    );
    assert_eq!(b["stream_options"]["include_usage"], true);
    let b = body_of("/v1/chat/completions", "top_p");
    assert_eq!(
        (
            b["model"].clone(),
            b["stop"].clone(),
            b["max_tokens"].clone()
        ),
        (json!("tiny"), json!(["\n\n"]), json!(512))
    );
    assert_eq!(body_of("/completion", "n_predict")["n_predict"], 64);
    assert_eq!(body_of("/api/chat", "messages")["messages"], chat);
    // Every generation ran to completion, and the journal checkpointed the chunks.
    assert!(served.iter().all(|s| s.completed), "{served:?}");
    let journal = w.journal_events("llm-live");
    assert!(journal.contains(&"chunk".to_string()), "{journal:?}");
    assert_eq!(status(&mut c, "llm-live").await["status"], "completed");
}

#[tokio::test]
async fn a_late_or_reconnecting_reader_resumes_from_its_last_index_without_loss() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let tokens: Vec<String> = (0..120).map(|i| format!("t{i} ")).collect();
    let engine = FakeEngine::start(EngineScript {
        tokens: tokens.clone(),
        token_interval: Duration::from_millis(10),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let w = start(&server, dir.path(), &engine_flags(&[("vllm", &engine)]));
    submit(
        &mut c,
        "llm-late",
        "llm_inference",
        json!({"prompt": "count"}),
    )
    .await;

    // A reader that saw the first few chunks and went away...
    let mut seen: Vec<Value> = Vec::new();
    let started = Instant::now();
    while seen.iter().filter(|e| e["type"] == "chunk").count() < 10 {
        assert!(started.elapsed() < WAIT, "no chunks");
        seen = events(&mut c, "llm-late").await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last_index = seen.iter().rfind(|e| e["type"] == "chunk").unwrap()["data"]["index"]
        .as_u64()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // ...comes back, reads the capped stream and keeps what is past its index.
    let all = wait_for(&mut c, "llm-late", "end", WAIT).await;
    let mut resumed: Vec<Value> = seen.clone();
    resumed.extend(all.into_iter().filter(|e| match e["type"].as_str() {
        Some("chunk") => e["data"]["index"].as_u64().unwrap() > last_index,
        Some("claimed" | "start") => false,
        _ => true,
    }));
    assert_eq!(chunks(&resumed), tokens, "no loss, no duplicates");
    assert_eq!(
        resumed.last().unwrap()["data"]["result"]["content"],
        tokens.concat()
    );
    // The journal's chunk checkpoints say how far the stream got (every 32 chunks and the last).
    let journal = w.journal("llm-late");
    let checkpoints: Vec<u64> = journal["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"]["type"] == "chunk")
        .map(|e| e["event"]["data"]["index"].as_u64().unwrap())
        .collect();
    assert_eq!(checkpoints, [31, 63, 95, 119]);

    // `citadel submit --wait` prints the tokens as they come and the result.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args([
            "submit",
            "llm_inference",
            "--redis-url",
            &server.url(),
            "--wait",
            "--timeout",
            "20s",
            "prompt=count",
            "max_tokens:=5",
        ])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("t0 t1 t2 t3 t4 "), "{stdout}");
    assert!(stdout.contains(r#""finish_reason":"length""#), "{stdout}");
}

#[tokio::test]
async fn cancellation_and_deadlines_close_the_engine_connection() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let engine = FakeEngine::start(EngineScript {
        tokens: (0..2000).map(|i| format!("{i} ")).collect(),
        token_interval: Duration::from_millis(20),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _w = start(&server, dir.path(), &engine_flags(&[("vllm", &engine)]));

    submit(
        &mut c,
        "llm-cancel",
        "llm_inference",
        json!({"prompt": "go", "max_tokens": 2000}),
    )
    .await;
    let started = Instant::now();
    while chunks(&events(&mut c, "llm-cancel").await).len() < 5 {
        assert!(started.elapsed() < WAIT, "no chunks");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _: () = redis::cmd("SET")
        .arg("job:cancelled:llm-cancel")
        .arg(1)
        .query_async(&mut c)
        .await
        .unwrap();
    let cancelled_at = Instant::now();
    let evs = wait_for(&mut c, "llm-cancel", "cancelled", WAIT).await;
    assert_eq!(evs.last().unwrap()["type"], "cancelled");
    let served = engine.served();
    let s = &served[0];
    let closed = s.closed.expect("the engine saw the connection close");
    assert!(!s.completed && s.tokens_sent < 2000, "{s:?}");
    // The cancellation key is polled every second; the connection closes right after.
    eprintln!(
        "cancel → engine connection closed: {:?}",
        closed.saturating_duration_since(cancelled_at)
    );
    assert!(
        closed.saturating_duration_since(cancelled_at) < Duration::from_secs(3),
        "{:?}",
        closed - cancelled_at
    );

    submit(
        &mut c,
        "llm-deadline",
        "llm_inference",
        json!({"prompt": "go", "max_tokens": 2000, "timeout_ms": 400, "maxAttempts": 1}),
    )
    .await;
    let evs = wait_for(&mut c, "llm-deadline", "error", WAIT).await;
    let (error, recoverable) = last_error(&evs);
    assert!(error.contains("timed out"), "{error}");
    assert!(!recoverable);
    eventually(
        WAIT,
        "the engine saw the deadline close the connection",
        || async {
            engine
                .served()
                .get(1)
                .is_some_and(|s| s.closed.is_some() && !s.completed)
        },
    )
    .await;
}

#[tokio::test]
async fn engine_failures_are_clear_errors_that_say_whether_a_retry_can_help() {
    let server = Server::start().await;
    let mut c = server.conn().await;
    let rejecting = FakeEngine::start(EngineScript {
        fail: Some((400, r#"{"object":"error","message":"This model's maximum context length is 2048 tokens","type":"BadRequestError","param":null,"code":400}"#.into())),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let cutting = FakeEngine::start(EngineScript {
        cut_after: Some(2),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let loading = FakeEngine::start(EngineScript {
        loading: true,
        ..EngineScript::default()
    })
    .await
    .unwrap();
    // A port nobody listens on: connection refused.
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut flags = engine_flags(&[
        ("vllm", &rejecting),
        ("sglang", &cutting),
        ("llamacpp", &loading),
    ]);
    flags.extend(
        [
            "--engine",
            &format!("ollama={refused}"),
            "--llm-ready-timeout",
            "1s",
            "--llm-idle-timeout",
            "700ms",
        ]
        .map(String::from),
    );
    let _w = start(&server, dir.path(), &flags);

    let one = |backend: &str| json!({"backend": backend, "model": "tiny", "prompt": "hi", "maxAttempts": 1});
    for (id, backend) in [
        ("e-400", "vllm"),
        ("e-cut", "sglang"),
        ("e-loading", "llamacpp"),
        ("e-refused", "ollama"),
    ] {
        submit(&mut c, id, "llm_inference", one(backend)).await;
    }
    submit(
        &mut c,
        "e-payload",
        "llm_inference",
        json!({"backend": "vllm"}),
    )
    .await;

    let expect = |id: &'static str, needles: &'static [&'static str], retryable: bool| {
        let server_url = server.url();
        async move {
            let mut c = redis::Client::open(server_url)
                .unwrap()
                .get_multiplexed_async_connection()
                .await
                .unwrap();
            let evs = wait_for(&mut c, id, "error", WAIT).await;
            let (error, _) = last_error(&evs);
            for n in needles {
                assert!(error.contains(n), "{id}: `{n}` not in: {error}");
            }
            // With one attempt allowed, the dead-letter reason tells the two kinds apart.
            // The error event goes out just before the dead-letter entry is written.
            let started = Instant::now();
            let entry = loop {
                let dlq = dead_letters(&mut c).await;
                if let Some(e) = dlq.into_iter().find(|d| d["jobId"] == id) {
                    break e;
                }
                assert!(started.elapsed() < WAIT, "{id} was not dead-lettered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let prefix = if retryable {
                "gave up after 1 attempts"
            } else {
                "permanent failure"
            };
            assert!(
                entry["reason"].starts_with(prefix),
                "{id}: {}",
                entry["reason"]
            );
        }
    };
    expect(
        "e-400",
        &["HTTP 400", "maximum context length is 2048"],
        false,
    )
    .await;
    expect("e-cut", &["cut after 2 tokens"], true).await;
    expect("e-loading", &["not ready", "Loading model"], true).await;
    expect("e-refused", &["not ready", "connection"], true).await;
    expect("e-payload", &["needs `prompt`"], false).await;
    let cut = wait_for(&mut c, "e-cut", "error", WAIT).await;
    assert_eq!(
        chunks(&cut),
        ["Hello", ","],
        "the tokens before the cut were streamed"
    );

    // An engine that stalls between tokens, and one that fails with a server error.
    cutting.script(|s| {
        s.cut_after = None;
        s.token_interval = Duration::from_secs(5);
    });
    rejecting.script(|s| s.fail = Some((500, "Internal Server Error".into())));
    submit(&mut c, "e-idle", "llm_inference", one("sglang")).await;
    submit(&mut c, "e-500", "llm_inference", one("vllm")).await;
    expect("e-idle", &["idle timeout", "after 1 tokens"], true).await;
    expect("e-500", &["HTTP 500", "Internal Server Error"], true).await;
    // The engine that finished loading serves the next job.
    loading.script(|s| s.loading = false);
    submit(&mut c, "e-loaded", "llm_inference", one("llamacpp")).await;
    let evs = wait_for(&mut c, "e-loaded", "end", WAIT).await;
    assert_eq!(
        evs.last().unwrap()["data"]["result"]["content"],
        "Hello, world!"
    );
}

/// Opt-in (`scripts/real-engine/run`, or `CITADEL_REAL_ENGINE=1 ./scripts/test`): a real
/// inference engine — llama-cpp-python's OpenAI-compatible server on the CPU with a tiny
/// random-weight model the script generates — behind `backend: vllm` (the OpenAI API).
#[tokio::test]
#[ignore = "needs a real engine: run scripts/real-engine/run"]
async fn real_engine_streams_tokens_through_the_worker() {
    let url = std::env::var("CITADEL_REAL_ENGINE_URL")
        .expect("CITADEL_REAL_ENGINE_URL: the engine's base URL (scripts/real-engine/run sets it)");
    let server = Server::start().await;
    let mut c = server.conn().await;
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--engine",
        &format!("vllm={url}"),
        "--llm-ready-timeout",
        "120s",
    ]
    .map(String::from);
    let _w = start(&server, dir.path(), &flags);
    let chat = json!([{"role": "user", "content": "the a of"}]);
    submit(
        &mut c,
        "real-prompt",
        "llm_inference",
        json!({"prompt": "the a of to", "max_tokens": 24, "temperature": 0.8}),
    )
    .await;
    submit(
        &mut c,
        "real-chat",
        "llm_inference",
        json!({"messages": chat, "max_tokens": 24}),
    )
    .await;
    for id in ["real-prompt", "real-chat"] {
        let evs = wait_for(&mut c, id, "end", Duration::from_secs(180)).await;
        assert!(!evs.iter().any(|e| e["type"] == "error"), "{evs:?}");
        let text = chunks(&evs).concat();
        let result = &evs.last().unwrap()["data"]["result"];
        eprintln!("{id}: {result}");
        assert_eq!(result["content"], text, "{id}: the chunks are the content");
        let finish = result["finish_reason"].as_str().unwrap();
        assert!(finish == "length" || finish == "stop", "{finish}");
        if finish == "length" {
            assert!(!text.is_empty());
        }
    }
}
