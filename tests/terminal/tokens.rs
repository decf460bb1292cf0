//! The token cache's refresh policy: one fetch per miss window against the real hashes
//! endpoint, a failing API retried with real exponential backoff (driven under paused time), the
//! old cache kept while the API is down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use citadel::terminal::auth::{
    FetchError, FetchHashes, HttpFetcher, RefreshPolicy, TokenCache, TokenRecord, Verdict,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{TokenApi, CREDENTIAL, ORG};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_fetches_once_and_a_second_miss_within_10s_not_at_all() {
    let api = TokenApi::default();
    let url = api.serve().await;
    let cache = TokenCache::new(
        ORG,
        Arc::new(HttpFetcher::new(&url, ORG, CREDENTIAL).unwrap()),
        RefreshPolicy::default(),
    );
    assert_eq!(cache.verify("late-token").await, Verdict::Unknown);
    assert_eq!(api.calls(), 1, "the first miss fetched");
    // Issued after the first miss: within the window it is not fetched again.
    api.add("late-token", "erin", ORG, None);
    assert_eq!(cache.verify("late-token").await, Verdict::Unknown);
    assert_eq!(cache.verify("another").await, Verdict::Unknown);
    assert_eq!(api.calls(), 1, "a second miss within 10 s fetched again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_after_the_window_finds_a_new_token() {
    let api = TokenApi::default();
    let url = api.serve().await;
    let policy = RefreshPolicy {
        miss_interval: Duration::from_millis(300),
        ..RefreshPolicy::default()
    };
    let cache = TokenCache::new(
        ORG,
        Arc::new(HttpFetcher::new(&url, ORG, CREDENTIAL).unwrap()),
        policy,
    );
    assert_eq!(cache.verify("late").await, Verdict::Unknown);
    api.add("late", "erin", ORG, None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(matches!(cache.verify("late").await, Verdict::Valid(u) if u.user_id == "erin"));
    assert_eq!(api.calls(), 2);
    // The API goes down: the cache keeps what it had.
    api.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(cache.refresh().await.is_err());
    assert!(matches!(cache.verify("late").await, Verdict::Valid(_)));
}

/// A token API that is down, recording when it was called (tokio's clock).
#[derive(Debug, Default)]
struct DownApi {
    calls: Mutex<Vec<Instant>>,
}

#[async_trait::async_trait]
impl FetchHashes for DownApi {
    async fn fetch(&self) -> Result<Vec<TokenRecord>, FetchError> {
        self.calls.lock().unwrap().push(Instant::now());
        Err(FetchError("502 Bad Gateway".into()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_api_is_retried_at_1_2_4_8_seconds() {
    let api = Arc::new(DownApi::default());
    let cache = TokenCache::new(ORG, api.clone(), RefreshPolicy::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(cache.clone().keep_fresh(stop.clone()));
    tokio::time::sleep(Duration::from_secs(600)).await;
    stop.cancel();
    task.await.unwrap();
    let calls = api.calls.lock().unwrap().clone();
    let gaps: Vec<u64> = calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(
        gaps,
        [1, 2, 4, 8, 16, 32, 64, 128, 256],
        "the waits between attempts"
    );
    // Capped at 5 minutes from then on.
    assert_eq!(
        RefreshPolicy::default().backoff.delay_with(12, 0.5),
        Duration::from_secs(300)
    );
}

#[tokio::test(start_paused = true)]
async fn a_healthy_api_is_asked_every_hour() {
    #[derive(Debug, Default)]
    struct UpApi(Mutex<Vec<Instant>>);
    #[async_trait::async_trait]
    impl FetchHashes for UpApi {
        async fn fetch(&self) -> Result<Vec<TokenRecord>, FetchError> {
            self.0.lock().unwrap().push(Instant::now());
            Ok(Vec::new())
        }
    }
    let api = Arc::new(UpApi::default());
    let cache = TokenCache::new(ORG, api.clone(), RefreshPolicy::default());
    let stop = CancellationToken::new();
    let task = tokio::spawn(cache.keep_fresh(stop.clone()));
    tokio::time::sleep(Duration::from_secs(3 * 3600 + 1)).await;
    stop.cancel();
    task.await.unwrap();
    let calls = api.0.lock().unwrap().clone();
    let gaps: Vec<u64> = calls.windows(2).map(|w| (w[1] - w[0]).as_secs()).collect();
    assert_eq!(gaps, [3600, 3600, 3600]);
}
