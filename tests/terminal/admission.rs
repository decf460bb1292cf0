//! Who gets a terminal: the connection cap, the per-client rate limit, tokens (unknown,
//! expired, of another organization, by header), the passcode gate and the origin check, each
//! answered with its JSON error.

use citadel::terminal::auth::token_hash;
use citadel::terminal::PasscodeGate;

use super::{refused, Client, Service, ORG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_eleventh_connection_gets_503() {
    let svc = Service::start(|_| {}).await;
    let mut open = Vec::new();
    for _ in 0..10 {
        let mut c = svc.connect().await;
        c.run("true").await;
        open.push(c);
    }
    let (status, body) = refused(&svc.url("token=alice-token"), &[]).await;
    assert_eq!(
        (status, body["status"].as_u64()),
        (503, Some(503)),
        "{body}"
    );
    assert_eq!(body["error"], "too many connections");
    let stats: serde_json::Value = reqwest_get(&format!("http://{}/stats", svc.addr())).await;
    assert_eq!(stats["connections"], 10);
    assert_eq!(stats["limits"]["max_connections"], 10);
    // A slot frees when a connection ends.
    drop(open.pop());
    let mut c = retry_connect(&svc).await;
    assert_eq!(c.run("echo back").await, "back");
}

/// Connects, retrying while the freed slot is not yet back.
async fn retry_connect(svc: &Service) -> Client {
    for _ in 0..100 {
        let url = svc.url("token=alice-token");
        if let Ok((ws, _)) = tokio_tungstenite::connect_async(&url).await {
            return Client {
                ws,
                output: Vec::new(),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no slot came free");
}

async fn reqwest_get(url: &str) -> serde_json::Value {
    let client = citadel_transports::http::build_client(reqwest::Client::builder).unwrap();
    client.get(url).send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_from_one_client_gets_429() {
    let svc = Service::start(|c| {
        c.rate = Default::default();
    })
    .await;
    // Five requests pass the rate limit (and fail later, on the token), the sixth does not.
    for _ in 0..5 {
        let (status, _) = refused(&svc.url("token=nope"), &[]).await;
        assert_eq!(status, 401);
    }
    let (status, body) = refused(&svc.url("token=alice-token"), &[]).await;
    assert_eq!(
        (status, &body["error"]),
        (429, &serde_json::json!("rate limited")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_for_counts_only_from_a_trusted_proxy() {
    let svc = Service::start(|c| {
        c.rate = Default::default();
        c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    })
    .await;
    // Each request claims another client behind the proxy: none is limited.
    for i in 0..8 {
        let xff = format!("10.0.0.{i}");
        let (status, _) = refused(&svc.url("token=nope"), &[("x-forwarded-for", &xff)]).await;
        assert_eq!(status, 401);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_by_org_expiry_and_header() {
    let svc = Service::start(|_| {}).await;
    svc.api.add("old", "bob", ORG, Some("2020-01-01T00:00:00Z"));
    svc.api.add("other-org", "carol", "org-2", None);
    svc.api
        .add("later", "dave", ORG, Some("2999-01-01T00:00:00Z"));
    let (status, body) = refused(&svc.url(""), &[]).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &serde_json::json!("missing token"))
    );
    assert_eq!(refused(&svc.url("token=bogus"), &[]).await.0, 401);
    let (status, body) = refused(&svc.url("token=old"), &[]).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &serde_json::json!("token expired")),
        "{body}"
    );
    // The API serves the node's organization only, so a token of another one is unknown here.
    assert_eq!(refused(&svc.url("token=other-org"), &[]).await.0, 401);
    let mut c = Client::connect(&svc.url("token=later")).await;
    assert_eq!(c.run("echo in").await, "in");
    // The bearer header works like the query.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = svc.url("").into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer alice-token".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passcode_gate_says_why_it_refuses() {
    let unset = Service::start(|c| {
        c.passcode = PasscodeGate {
            required: true,
            hash: None,
        };
    })
    .await;
    let (status, body) = refused(&unset.url("token=alice-token&passcode=1234"), &[]).await;
    assert_eq!(
        (status, &body["reason"]),
        (401, &serde_json::json!("passcode_not_set")),
        "{body}"
    );

    let set = Service::start(|c| {
        c.passcode = PasscodeGate {
            required: true,
            hash: Some(token_hash("1234")),
        };
    })
    .await;
    for query in ["token=alice-token", "token=alice-token&passcode=4321"] {
        let (status, body) = refused(&set.url(query), &[]).await;
        assert_eq!(
            (status, &body["reason"]),
            (401, &serde_json::json!("passcode_invalid")),
            "{body}"
        );
    }
    let mut c = Client::connect(&set.url("token=alice-token&passcode=1234")).await;
    assert_eq!(c.run("echo in").await, "in");
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let mut req = set.url("token=alice-token").into_client_request().unwrap();
    req.headers_mut()
        .insert("x-citadel-passcode", "1234".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_origins_are_refused() {
    let svc = Service::start(|c| c.allowed_origins = vec!["https://app.example.com".into()]).await;
    let url = svc.url("token=alice-token");
    let (status, body) = refused(&url, &[("origin", "https://evil.example.com")]).await;
    assert_eq!(
        (status, &body["error"]),
        (403, &serde_json::json!("origin not allowed"))
    );
    for ok in ["http://localhost:3000", "https://app.example.com"] {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = url.as_str().into_client_request().unwrap();
        req.headers_mut().insert("origin", ok.parse().unwrap());
        assert!(tokio_tungstenite::connect_async(req).await.is_ok(), "{ok}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_and_health_describe_the_service() {
    let svc = Service::start(|_| {}).await;
    let index = reqwest_get(&format!("http://{}/", svc.addr())).await;
    assert_eq!(index["service"], "citadel-terminal");
    assert!(index["endpoints"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!("/terminal")));
    assert_eq!(
        reqwest_get(&format!("http://{}/health", svc.addr())).await["status"],
        "ok"
    );
}
