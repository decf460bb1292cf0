//! The console in a real browser: headless Chromium driven through chromedriver (WebDriver, the
//! `fantoccini` crate) against the real control plane and a real `citadel work` on the nexus
//! transport with the stand-in inference engine. Every wait is bounded (10 s); screenshots go to
//! `target/ui-shots/`. Without Chromium or chromedriver the tests are skipped, except under
//! `CI=true`, where that fails them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use citadel_harness::engine::{EngineScript, FakeEngine};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::plane::{free_port, Plane};
use crate::support::worker::Worker;

pub(super) const WAIT: Duration = Duration::from_secs(10);

/// chromedriver on a free loopback port, killed on drop.
pub(super) struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    names.iter().find_map(|n| {
        std::env::split_paths(&path)
            .chain([
                PathBuf::from("/usr/bin"),
                PathBuf::from("/usr/lib/chromium"),
            ])
            .map(|d| d.join(n))
            .find(|p| p.is_file())
    })
}

/// The browser and its driver, or `None` (skipped) when they are not installed; under
/// `CI=true` their absence fails the test.
fn browser_parts() -> Option<(PathBuf, PathBuf)> {
    let chromium = find(&["chromium", "chromium-browser", "google-chrome"]);
    let driver = find(&["chromedriver"]);
    match (chromium, driver) {
        (Some(c), Some(d)) => Some((c, d)),
        _ => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true: chromium and chromedriver are required (scripts/test installs them)"
            );
            eprintln!("skipped: chromium or chromedriver is not installed");
            None
        }
    }
}

pub(super) async fn start_browser() -> Option<(Driver, Client)> {
    let (chromium, driver) = browser_parts()?;
    let port = free_port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting chromedriver");
    let d = Driver { child, port };
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", d.port)).is_err() {
        assert!(started.elapsed() < WAIT, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "goog:chromeOptions": {
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,900", "--no-first-run"],
        }
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let client = ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", d.port))
        .await
        .expect("a WebDriver session");
    Some((d, client))
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-shots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("a screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element `css` finds, waiting for it (bounded).
pub(super) async fn text(c: &Client, css: &str) -> String {
    let el = c
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    el.text().await.unwrap()
}

/// Waits (bounded) until `check` holds for the text of `css`.
pub(super) async fn until_text(
    c: &Client,
    css: &str,
    what: &str,
    check: impl Fn(&str) -> bool,
) -> String {
    let started = std::time::Instant::now();
    loop {
        let t = match c.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if check(&t) {
            return t;
        }
        assert!(
            started.elapsed() < WAIT,
            "timed out waiting for {what}; {css} reads {t:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(super) async fn click(c: &Client, css: &str) {
    let el = c.find(Locator::Css(css)).await;
    el.unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

pub(super) async fn type_into(c: &Client, css: &str, text: &str) {
    let el = c.find(Locator::Css(css)).await;
    el.unwrap_or_else(|e| panic!("{css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

pub(super) async fn sign_in(c: &Client, p: &Plane) {
    c.goto(&format!("{}/ui/jobs", p.url())).await.unwrap();
    let url = c.current_url().await.unwrap();
    assert_eq!(
        url.path(),
        "/ui/login",
        "signed out, the console asks to sign in"
    );
    type_into(c, "#token", &p.token).await;
    click(c, "#login").await;
    text(c, "#by-state").await;
}

fn worker(p: &Plane, data: &Path, engine: &FakeEngine) -> Worker {
    let engine = format!("vllm={}", engine.url());
    let transport = p.work_flags(&p.token);
    Worker::start_on(
        &transport.each_ref().map(String::as_str),
        data,
        &["--engine", &engine, "--concurrency", "4"],
    )
}

fn state(p: &Plane, id: &str) -> String {
    p.json("GET", &format!("/api/v1/jobs/{id}"), None)["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits (bounded) until the job is in state `want`.
async fn until_state(p: &Plane, id: &str, want: &str) {
    let started = std::time::Instant::now();
    while state(p, id) != want {
        assert!(started.elapsed() < WAIT, "job {id} never became {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn submit_watch_stream_and_cancel_in_a_real_browser() {
    let Some((_driver, c)) = start_browser().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    let tokens: Vec<String> = (0..30).map(|i| format!("tok{i} ")).collect();
    let engine = FakeEngine::start(EngineScript {
        tokens: tokens.clone(),
        token_interval: Duration::from_millis(120),
        ..EngineScript::default()
    })
    .await
    .unwrap();
    let _w = worker(&p, &tmp.path().join("w"), &engine);
    sign_in(&c, &p).await;
    shot(&c, "overview").await;

    // Submit through the form: it lands on the new job's page.
    c.goto(&format!("{}/ui/submit", p.url())).await.unwrap();
    type_into(&c, "#s-type", "echo").await;
    let payload = c.find(Locator::Css("#s-payload")).await.unwrap();
    payload.clear().await.unwrap();
    payload
        .send_keys(r#"{"msg": "from the browser"}"#)
        .await
        .unwrap();
    click(&c, "#submit").await;
    until_text(&c, "#job-state", "the echo job succeeds", |t| {
        t == "succeeded"
    })
    .await;
    assert!(text(&c, "#payload").await.contains("from the browser"));

    // The list shows a job submitted meanwhile without a reload.
    c.goto(&format!("{}/ui/jobs", p.url())).await.unwrap();
    c.execute("window.__stillHere = true;", vec![])
        .await
        .unwrap();
    let id = p.submit(json!({"type": "sleep", "payload": {"ms": 60000}}));
    until_text(&c, "#rows", "the new job in the list", |t| t.contains(&id)).await;
    let same_page = c
        .execute("return window.__stillHere === true;", vec![])
        .await
        .unwrap();
    assert_eq!(
        same_page,
        Value::Bool(true),
        "the list refreshed in place, no reload"
    );
    shot(&c, "jobs").await;

    // Cancel the running sleep job from its page.
    until_state(&p, &id, "leased").await;
    c.goto(&format!("{}/ui/jobs/{id}", p.url())).await.unwrap();
    click(&c, "#cancel").await;
    until_text(&c, "#job-state", "the job is cancelled", |t| {
        t == "cancelled"
    })
    .await;

    // An LLM job's tokens appear as they are generated, then the stream closes.
    let llm = p.submit(json!({"type": "llm_inference",
        "payload": {"prompt": "hi", "backend": "vllm", "model": "tiny", "max_tokens": 30}}));
    c.goto(&format!("{}/ui/jobs/{llm}", p.url())).await.unwrap();
    let partial = until_text(&c, "#output", "the first tokens", |t| t.contains("tok3")).await;
    assert!(
        !partial.contains("tok29"),
        "tokens arrive while generated: {partial:?}"
    );
    shot(&c, "job-streaming").await;
    let all = until_text(&c, "#output", "every token", |t| t.contains("tok29")).await;
    assert_eq!(
        all.split_whitespace().count(),
        30,
        "each token once: {all:?}"
    );
    until_text(&c, "#job-state", "the LLM job succeeds", |t| {
        t == "succeeded"
    })
    .await;
    let closed = c
        .execute(
            "return document.getElementById('timeline').dataset.closed || '';",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        closed,
        Value::String("true".into()),
        "the stream is closed, not reconnecting"
    );
    let timeline = text(&c, "#timeline").await;
    assert!(timeline.contains("end"), "{timeline}");
    shot(&c, "job").await;
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn requeue_a_dead_letter_and_read_a_nodes_gpus_in_a_real_browser() {
    let Some((_driver, c)) = start_browser().await else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let p = Plane::start(&tmp.path().join("plane"));
    // A job only node "elsewhere" may take, claimed there and left to expire: dead-lettered.
    let dead = p.submit(json!({"type": "echo", "maxAttempts": 1, "target_node": "elsewhere"}));
    let got = p.json(
        "POST",
        "/api/v1/jobs/claim",
        Some(json!({"worker": "w", "node": "elsewhere", "lease_ms": 1})),
    );
    assert_eq!(got["jobs"].as_array().unwrap().len(), 1);
    until_state(&p, &dead, "dead").await;
    let report = json!({
        "gpu": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory_total_bytes": 85_899_345_920u64,
                 "memory_used_bytes": 4_294_967_296u64, "utilization_percent": 37,
                 "temperature_c": 54, "power_watts": 121.5}],
        "services": [{"name": "vllm", "state": "running", "health": "healthy"}],
    });
    p.json(
        "POST",
        "/api/v1/nodes/heartbeat",
        Some(json!({"id": "gpu-node-1", "name": "gpu-box", "report": report})),
    );
    sign_in(&c, &p).await;

    c.goto(&format!("{}/ui/dlq", p.url())).await.unwrap();
    assert!(text(&c, "#dead").await.contains(&dead));
    shot(&c, "dead-letters").await;
    click(&c, ".requeue").await;
    until_text(&c, "#dead", "the dead letter leaves the list", |t| {
        !t.contains(&dead)
    })
    .await;
    assert_eq!(state(&p, &dead), "queued");

    c.goto(&format!("{}/ui/nodes", p.url())).await.unwrap();
    until_text(&c, "#nodes", "the node is online", |t| {
        t.contains("gpu-box") && t.contains("online")
    })
    .await;
    c.find(Locator::LinkText("gpu-box"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let gpus = text(&c, "#gpus").await;
    for want in [
        "NVIDIA H100 80GB HBM3",
        "37%",
        "4.0 GiB / 80.0 GiB",
        "54 °C",
    ] {
        assert!(gpus.contains(want), "{want} in {gpus}");
    }
    assert!(text(&c, "#services").await.contains("healthy"));
    shot(&c, "node").await;
    c.close().await.unwrap();
}
