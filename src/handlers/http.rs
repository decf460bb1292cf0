//! The HTTP client the handlers (and the CLI's status command) share: reqwest on rustls with
//! the `ring` provider, a connect timeout, no overall timeout (a download can take hours; each
//! caller bounds its own requests), and the classification of HTTP failures into errors that say
//! whether a retry can help. It must never log a URL's credentials.

use std::time::Duration;

use reqwest::StatusCode;

use super::HandlerError;
pub use citadel_transports::http::build_client;

/// A client with `connect_timeout`.
pub fn http_client(connect_timeout: Duration) -> reqwest::Result<reqwest::Client> {
    build_client(|| {
        reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .user_agent(concat!("citadel/", env!("CARGO_PKG_VERSION")))
    })
}

/// Whether a server's answer with `status` can turn out differently later: 408, 425, 429 and
/// 5xx can; any other 4xx cannot (the request itself is wrong).
pub fn status_is_retryable(status: StatusCode) -> bool {
    status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429)
}

/// A request that failed before an answer (connection refused, reset, timed out): retryable.
pub fn transport_error(what: &str, e: &reqwest::Error) -> HandlerError {
    HandlerError::retryable(format!("{what}: {}", describe(e)))
}

/// `https://user:secret@host/path?q` → `https://host/path`: what a log or error may show.
pub fn display_url(url: &reqwest::Url) -> String {
    format!(
        "{}://{}{}",
        url.scheme(),
        url.host_str().unwrap_or(""),
        url.port().map(|p| format!(":{p}")).unwrap_or_default()
    ) + url.path()
}

/// A `reqwest::Error` in words, without the URL (which may carry a token in its query).
pub fn describe(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = if e.is_connect() {
        "connection failed".to_string()
    } else if e.is_timeout() {
        "timed out".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_urls() {
        assert!(status_is_retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(status_is_retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!status_is_retryable(StatusCode::NOT_FOUND));
        assert!(!status_is_retryable(StatusCode::UNPROCESSABLE_ENTITY));
        let u = reqwest::Url::parse("https://me:pw@example.com:8443/m/a.gguf?token=x").unwrap();
        assert_eq!(display_url(&u), "https://example.com:8443/m/a.gguf");
    }
}
