//! Readiness probes: one HTTP/1.1 `GET` to an engine's readiness endpoint on loopback, answered
//! 2xx or not. A plain TCP client (no TLS: engines listen on the node itself). It never retries;
//! the caller decides how long to wait.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// `Ok(status)` when the engine answered 2xx, else a short reason.
pub async fn probe(url: &str, timeout: Duration) -> Result<u16, String> {
    tokio::time::timeout(timeout, get(url))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {}ms", timeout.as_millis())))
}

async fn get(url: &str) -> Result<u16, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("not an http:// URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connecting to {authority}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: citadel\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("the connection closed before an answer".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(format!("answered {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_2xx_is_ready_and_anything_else_says_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                let resp = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/health");
        assert_eq!(probe(&url, Duration::from_secs(5)).await, Ok(200));
        let err = probe(&url, Duration::from_secs(5)).await.unwrap_err();
        assert!(err.contains("503"), "{err}");
        let closed = probe("http://127.0.0.1:1/health", Duration::from_secs(5)).await;
        assert!(closed.unwrap_err().contains("connecting"));
    }
}
