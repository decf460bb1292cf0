//! A `citadel nexus serve` child process and a raw HTTP/1.1 client (so responses are checked as
//! the bytes on the wire). It runs this package's own binary (`CARGO_BIN_EXE_citadel`, which only
//! its integration tests see), so it lives here and not in `citadel-harness`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_citadel");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running control plane with its own data folder.
pub struct Plane {
    child: Option<Child>,
    pub dir: PathBuf,
    pub port: u16,
    pub token: String,
}

impl Plane {
    pub fn start(dir: &Path) -> Self {
        Self::start_on(dir, free_port())
    }

    pub fn start_on(dir: &Path, port: u16) -> Self {
        Self::spawn(dir, port, &[])
    }

    /// A control plane with extra `nexus serve` flags (e.g. `--device-code-ttl 3s`).
    pub fn start_args(dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(dir, free_port(), extra)
    }

    fn spawn(dir: &Path, port: u16, extra: &[&str]) -> Self {
        let log = std::fs::File::create(dir.with_extension(format!("{port}.log"))).unwrap();
        let child = Command::new(BIN)
            .args(["--log", "citadel=debug,warn", "nexus", "serve", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data")
            .arg(dir)
            .args(extra)
            .env_remove("CITADEL_DATA_DIR")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let started = Instant::now();
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() && dir.join("token").exists() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the control plane did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let token = std::fs::read_to_string(dir.join("token"))
            .unwrap()
            .trim()
            .to_string();
        Self {
            child: Some(child),
            dir: dir.to_path_buf(),
            port,
            token,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `citadel work`'s flags for this plane's nexus transport with `token` (the plane's own,
    /// or a node's credential).
    pub fn work_flags(&self, token: &str) -> [String; 6] {
        [
            "--transport",
            "nexus",
            "--nexus-url",
            &self.url(),
            "--nexus-token",
            token,
        ]
        .map(str::to_string)
    }

    /// The process id, while it runs (the websocket tests stop and resume the process).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// A request with the right token.
    pub fn call(&self, method: &str, path: &str, body: Option<&str>) -> Resp {
        let auth = format!("Bearer {}", self.token);
        raw(self.port, method, path, &[("Authorization", &auth)], body)
    }

    /// A request whose answer must be 2xx JSON.
    pub fn json(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let r = self.call(method, path, text.as_deref());
        assert!(
            (200..300).contains(&r.status),
            "{method} {path}: {} {}",
            r.status,
            r.body
        );
        serde_json::from_str(&r.body).unwrap_or(Value::Null)
    }

    /// A job's event stream (SSE) as it stands, `query` appended to the path (e.g. `?after=1`).
    pub fn events(&self, id: &str, query: &str) -> Resp {
        self.call("GET", &format!("/api/v1/jobs/{id}/events{query}"), None)
    }

    pub fn submit(&self, body: Value) -> String {
        self.json("POST", "/api/v1/jobs", Some(body))["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The values of one SSE field (`event`, `id`, …) in a stream's body, in order.
pub fn sse_field<'a>(body: &'a str, field: &str) -> Vec<&'a str> {
    let prefix = format!("{field}: ");
    body.lines()
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {:?}", self.body))
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), the answer read to the end.
pub fn raw(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        // JSON unless the caller names the body's type (a form, say).
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            req.push_str("Content-Type: application/json\r\n");
        }
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    if let Some(b) = body {
        s.write_all(b.as_bytes()).unwrap();
    }
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse(&out)
}

fn parse(out: &[u8]) -> Resp {
    let text = String::from_utf8_lossy(out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

/// Waits until `f` holds.
pub fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < within, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The `citadel` binary on a data directory, with no transport setting inherited from the
/// environment.
pub fn citadel(data: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir").arg(data);
    for var in [
        "CITADEL_DATA_DIR",
        "CITADEL_REDIS_URL",
        "CITADEL_NEXUS_URL",
        "CITADEL_NEXUS_TOKEN",
        "CITADEL_WS_URL",
        "CITADEL_TRANSPORT",
        "CITADEL_CONFIG",
    ] {
        c.env_remove(var);
    }
    c
}

/// Calls `next` until `want` deliveries came (at most 50 calls), never asking for more than `max`.
pub async fn next_n(
    src: &dyn citadel_transports::JobSource,
    max: usize,
    want: usize,
) -> Vec<citadel_transports::Incoming> {
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(src.next(max - got.len()).await.unwrap());
        if got.len() >= want {
            break;
        }
    }
    got
}
