//! The HTTP side of the control-plane transports (nexus, websocket): one reqwest client (rustls on `ring`), the bearer token
//! on every request, and the mapping of HTTP failures onto [`SourceError`] (unreachable or 5xx:
//! retryable; 401/403: a configuration error; 409: a lost lease). This module must never log the
//! token, and it must never decide what happens to a job.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use crate::source::SourceError;

#[derive(Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A failed request: what the transport should report, and the HTTP status when one came back.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: Option<StatusCode>,
    pub error: SourceError,
}

impl From<Failure> for SourceError {
    fn from(f: Failure) -> Self {
        f.error
    }
}

impl Client {
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> Result<Self, SourceError> {
        let http = crate::http::build_client(|| {
            reqwest::Client::builder()
                .connect_timeout(timeout)
                .pool_idle_timeout(Duration::from_secs(50))
        })
        .map_err(|e| SourceError::Config(format!("building the HTTP client: {e}")))?;
        let base = base.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(SourceError::Config(format!(
                "the nexus URL must start with http:// or https://, not {base:?}"
            )));
        }
        Ok(Self { http, base, token })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, format!("{}{}", self.base, path));
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Sends with a deadline; a non-2xx answer is a [`Failure`] carrying the server's message.
    pub async fn send(&self, rb: RequestBuilder, timeout: Duration) -> Result<Response, Failure> {
        let resp = rb.timeout(timeout).send().await.map_err(|e| Failure {
            status: None,
            error: SourceError::Unavailable(format!("control plane: {}", without_url(&e))),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or(text);
        Err(failure(status, &msg))
    }

    /// Sends and decodes a JSON answer.
    pub async fn json(&self, rb: RequestBuilder, timeout: Duration) -> Result<Value, Failure> {
        let resp = self.send(rb, timeout).await?;
        resp.json::<Value>().await.map_err(|e| Failure {
            status: None,
            error: SourceError::Unavailable(format!(
                "control plane answer unreadable: {}",
                without_url(&e)
            )),
        })
    }
}

/// The [`Failure`] of a non-2xx `status` with the server's message `msg` (a whole answer's, or
/// one batch operation's).
pub(crate) fn failure(status: StatusCode, msg: &str) -> Failure {
    let error = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => SourceError::Config(format!(
            "the control plane refused the token ({status}): {msg}"
        )),
        s if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
            SourceError::Busy(format!("control plane answered {status}: {msg}"))
        }
        _ => SourceError::Broker(format!("control plane answered {status}: {msg}")),
    };
    Failure {
        status: Some(status),
        error,
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
