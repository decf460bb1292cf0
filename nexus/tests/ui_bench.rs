//! The console's jobs page on a big store: 100,000 jobs stored, a real control plane
//! (`citadel_nexus::start`), pages fetched over HTTP with a console session. Prints the median
//! and worst answer time of each kind of page, and the full scan the index replaces, for
//! comparison. Ignored by default (it takes a while); run with
//! `cargo test --release -p citadel-nexus --test ui_bench -- --ignored --nocapture`.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use citadel_nexus::store::{LeaseSettle, NewJob, Store, DEFAULT_LEASE};
use citadel_nexus::Listen;

const JOBS: usize = 100_000;

fn request(port: u16, method: &str, path: &str, headers: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (status, out)
}

fn fill(dir: &std::path::Path) {
    let store = Store::open(dir).unwrap();
    let started = Instant::now();
    for i in 0..JOBS {
        let ty = ["echo", "llm_inference", "shell_command"][i % 3];
        let new: NewJob = serde_json::from_value(serde_json::json!({
            "type": ty,
            "payload": {"n": i, "text": format!("item-{i}")},
        }))
        .unwrap();
        store.submit(new).unwrap();
    }
    // Most jobs finished, as on a busy plane: claim and settle 90% of them.
    let mut left = JOBS * 9 / 10;
    while left > 0 {
        let got = store
            .claim("default", "bench-node", left.min(1000), DEFAULT_LEASE)
            .unwrap();
        for r in &got {
            let lease = r.lease.as_ref().unwrap().id.clone();
            store
                .settle(&r.id, &lease, LeaseSettle::Ack { outcome: None })
                .unwrap();
        }
        left -= got.len();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(store.flush()).unwrap();
    eprintln!(
        "stored {JOBS} jobs in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn time(what: &str, mut f: impl FnMut()) {
    let mut took: Vec<Duration> = (0..21)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    took.sort();
    println!(
        "{what:<46} median {:>7.2} ms   worst {:>7.2} ms",
        took[10].as_secs_f64() * 1e3,
        took[20].as_secs_f64() * 1e3
    );
}

#[test]
#[ignore = "a benchmark: run it with --ignored --nocapture, in release"]
fn the_jobs_page_with_100k_jobs_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("plane");
    std::fs::create_dir_all(&dir).unwrap();
    fill(&dir.join("db"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let running = rt
        .block_on(citadel_nexus::start(&dir, Listen::LoopbackFrom(0)))
        .unwrap();
    let port = running.addr.port();
    let form = "Content-Type: application/x-www-form-urlencoded\r\nOrigin: http://127.0.0.1\r\n";
    let (status, head) = request(
        port,
        "POST",
        "/ui/login",
        form,
        &format!("token={}", running.token),
    );
    assert_eq!(status, 303);
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let headers = format!("Cookie: {cookie}\r\n");
    for (what, path) in [
        ("jobs page, no filter", "/ui/jobs"),
        ("jobs page, state=queued", "/ui/jobs?state=queued"),
        (
            "jobs page, state=succeeded, page 100",
            "/ui/jobs?state=succeeded&page=100",
        ),
        ("jobs page, type=echo", "/ui/jobs?type=echo"),
        ("jobs page, since=1h", "/ui/jobs?since=1h"),
        ("overview", "/ui/"),
        (
            "jobs page, search q=item-5 (payload scan)",
            "/ui/jobs?q=item-5",
        ),
    ] {
        time(what, || {
            let (status, body) = request(port, "GET", path, &headers, "");
            assert_eq!(status, 200, "{body}");
        });
    }
    // What a page without the index costs: every job filtered and sorted.
    time(
        "for comparison: API GET /jobs?state=queued&limit=50",
        || {
            let auth = format!("Authorization: Bearer {}\r\n", running.token);
            let (status, _) = request(port, "GET", "/api/v1/jobs?state=queued&limit=50", &auth, "");
            assert_eq!(status, 200);
        },
    );
    rt.block_on(running.stop()).unwrap();
}
