//! The control plane as the CLI sees it: which one to talk to (`--nexus URL`/`CITADEL_NEXUS_URL`,
//! else the local one found through `DATA_DIR/nexus/address`), its token (`--token`/
//! `CITADEL_NEXUS_TOKEN`, else `DATA_DIR/nexus/token`), and a small JSON client with an SSE
//! reader for job events. It must never print the token.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use reqwest::Method;
use serde_json::Value;

/// The flags that choose a control plane and its token (`--nexus URL`, `--token TOKEN`); global,
/// so a command with subcommands (`jobs`, `nodes`) takes them before or after the subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct PlaneArgs {
    /// A control plane (default: the local one, found through DATA_DIR/nexus).
    #[arg(
        long = "nexus",
        env = "CITADEL_NEXUS_URL",
        value_name = "URL",
        global = true
    )]
    pub nexus_url: Option<String>,
    /// The control plane's bearer token (default: DATA_DIR/nexus/token).
    #[arg(
        long,
        env = "CITADEL_NEXUS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
}

impl PlaneArgs {
    pub fn locate(&self, data_dir: &Path) -> anyhow::Result<Plane> {
        Plane::locate(self.nexus_url.as_deref(), self.token.as_deref(), data_dir)
    }
}

/// A connection to one control plane.
#[derive(Debug, Clone)]
pub struct Plane {
    http: reqwest::Client,
    pub url: String,
    token: Option<String>,
}

impl Plane {
    /// The explicit URL, else the local control plane of `data_dir`.
    pub fn locate(url: Option<&str>, token: Option<&str>, data_dir: &Path) -> anyhow::Result<Self> {
        let dir = citadel_nexus::data_dir(data_dir);
        let url = match url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => match citadel_nexus::read_address(&dir) {
                Some(u) => u,
                None => bail!(
                    "no control plane found: nothing is listening for {} (start `citadel work` or \
                     `citadel nexus serve` first, or pass --nexus URL / --redis-url URL)",
                    dir.display()
                ),
            },
        };
        let token = match token {
            Some(t) => Some(t.to_string()),
            None => citadel_nexus::read_token(&dir)?,
        };
        Self::with_token(url, token)
    }

    fn with_token(url: String, token: Option<String>) -> anyhow::Result<Self> {
        let http = citadel_transports::http::build_client(|| {
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5))
        })
        .context("building the HTTP client")?;
        Ok(Self { http, url, token })
    }

    /// A control plane at `url`, without a token (device authorization: the node has none yet,
    /// and a local token must never travel to another control plane).
    pub fn anonymous(url: &str) -> anyhow::Result<Self> {
        Self::with_token(url.trim_end_matches('/').to_string(), None)
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.url));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends a request with an optional JSON body; a non-2xx answer is an error with the
    /// server's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if !status.is_success() {
            let msg = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            bail!("{method} {path}: {status}: {msg}");
        }
        if text.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: unreadable answer"))
    }

    /// Sends a request; the status and the body as text, whatever the status.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(reqwest::StatusCode, String)> {
        let mut rb = self.request(method, path).timeout(Duration::from_secs(30));
        if let Some(b) = body {
            rb = rb.json(b);
        }
        let resp = rb
            .send()
            .await
            .with_context(|| format!("cannot reach the control plane at {}", self.url))?;
        let status = resp.status();
        Ok((status, resp.text().await.unwrap_or_default()))
    }

    /// Streams a job's events (SSE), resuming after `after`; calls `on_event(id, event)` for each
    /// and stops when it returns false or the server ends the stream. Returns the last event id.
    pub async fn follow_events(
        &self,
        job: &str,
        after: Option<u64>,
        mut on_event: impl FnMut(u64, Value) -> bool,
    ) -> anyhow::Result<Option<u64>> {
        let mut rb = self.request(Method::GET, &format!("/api/v1/jobs/{}/events", encode(job)));
        if let Some(a) = after {
            rb = rb.header("Last-Event-ID", a.to_string());
        }
        let mut resp = rb.send().await.context("opening the event stream")?;
        if !resp.status().is_success() {
            bail!("event stream of {job}: {}", resp.status());
        }
        let mut last = after;
        let mut buf = String::new();
        while let Some(chunk) = resp.chunk().await.context("reading the event stream")? {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                let (mut id, mut data) = (None, String::new());
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = v.trim().parse::<u64>().ok();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if let (Some(id), false) = (id, data.is_empty()) {
                    last = Some(id);
                    let ev: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                    if !on_event(id, ev) {
                        return Ok(last);
                    }
                }
            }
        }
        Ok(last)
    }
}

/// Percent-encodes a path segment.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
