//! Who may open a terminal: the cache of valid token hashes (hex SHA-256) that the control
//! plane the node is enrolled with serves at `GET /api/fabric/terminal/tokens/{orgId}/hashes`.
//! The cache is refreshed every hour, once on a miss (at most once per 10 s), and, while the API
//! fails, retried with real exponential backoff (1 s doubling to 5 min), the old cache kept.
//! Time is tokio's clock and the fetch is a trait object, so tests drive the whole policy under
//! paused time. This module never logs a token, and never lets a token of another organization
//! or past its `expires_at` in.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use citadel_transports::Backoff;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One valid token as the control plane lists it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct TokenRecord {
    pub hash: String,
    pub user_id: String,
    pub org_id: String,
    /// RFC 3339, or null for a token that does not expire.
    #[serde(default)]
    pub expires_at: Option<String>,
}

/// The body of the hashes endpoint.
#[derive(Debug, Clone, Deserialize)]
pub struct HashesResponse {
    pub tokens: Vec<TokenRecord>,
}

/// Why the token list could not be fetched (every failure is worth retrying later).
#[derive(Debug, thiserror::Error)]
#[error("fetching the terminal token hashes: {0}")]
pub struct FetchError(pub String);

/// Where the token list comes from.
#[async_trait::async_trait]
pub trait FetchHashes: Send + Sync + std::fmt::Debug {
    async fn fetch(&self) -> Result<Vec<TokenRecord>, FetchError>;
}

/// The user a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub user_id: String,
    pub org_id: String,
}

/// What the cache says of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid(User),
    Unknown,
    Expired,
    /// Valid, but for another organization than this node's.
    WrongOrg,
}

/// The refresh policy.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    pub every: Duration,
    pub miss_interval: Duration,
    pub backoff: Backoff,
}

impl Default for RefreshPolicy {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(3600),
            miss_interval: Duration::from_secs(10),
            backoff: Backoff {
                jitter: 0.0,
                ..Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
            },
        }
    }
}

/// Hex SHA-256 of a token, as the control plane stores it.
pub fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[derive(Debug, Clone)]
struct Entry {
    user: User,
    expires_at: Option<SystemTime>,
}

/// The cache's contents: a pure map from hash to user, checked against a given wall clock.
#[derive(Debug, Default)]
pub struct TokenSet {
    entries: HashMap<String, Entry>,
}

impl TokenSet {
    pub fn from_records(records: Vec<TokenRecord>) -> Self {
        let entries = records
            .into_iter()
            .map(|r| {
                // An unreadable expiry fails closed: the token counts as expired.
                let expires_at = r.expires_at.as_deref().map(|t| {
                    humantime::parse_rfc3339_weak(t.trim_end_matches('Z'))
                        .unwrap_or(SystemTime::UNIX_EPOCH)
                });
                let user = User {
                    user_id: r.user_id,
                    org_id: r.org_id,
                };
                (r.hash.to_ascii_lowercase(), Entry { user, expires_at })
            })
            .collect();
        Self { entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The verdict on `token` for a node of `org` at `now`.
    pub fn check(&self, token: &str, org: &str, now: SystemTime) -> Verdict {
        let Some(e) = self.entries.get(&token_hash(token)) else {
            return Verdict::Unknown;
        };
        if e.user.org_id != org {
            Verdict::WrongOrg
        } else if e.expires_at.is_some_and(|t| t <= now) {
            Verdict::Expired
        } else {
            Verdict::Valid(e.user.clone())
        }
    }
}

/// The token cache with its refresh policy.
#[derive(Debug)]
pub struct TokenCache {
    org: String,
    fetcher: Arc<dyn FetchHashes>,
    policy: RefreshPolicy,
    set: std::sync::RwLock<TokenSet>,
    /// When the last refresh on a miss started; held while it runs, so misses share one fetch.
    last_miss: Mutex<Option<Instant>>,
}

impl TokenCache {
    pub fn new(org: &str, fetcher: Arc<dyn FetchHashes>, policy: RefreshPolicy) -> Arc<Self> {
        Arc::new(Self {
            org: org.to_string(),
            fetcher,
            policy,
            set: Default::default(),
            last_miss: Mutex::new(None),
        })
    }

    /// How many hashes the cache holds.
    pub fn cached(&self) -> usize {
        self.set.read().expect("token set").len()
    }

    fn check(&self, token: &str) -> Verdict {
        let set = self.set.read().expect("token set");
        set.check(token, &self.org, SystemTime::now())
    }

    /// Fetches the list once; on success it replaces the cache, on failure the old one stays.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let records = self.fetcher.fetch().await?;
        let set = TokenSet::from_records(records);
        let n = set.len();
        *self.set.write().expect("token set") = set;
        Ok(n)
    }

    /// The verdict on `token`; an unknown token refreshes the cache first, at most once per
    /// `miss_interval` whatever the number of misses.
    pub async fn verify(&self, token: &str) -> Verdict {
        let first = self.check(token);
        if first != Verdict::Unknown {
            return first;
        }
        let mut last = self.last_miss.lock().await;
        if last.is_some_and(|t| t.elapsed() < self.policy.miss_interval) {
            return self.check(token);
        }
        *last = Some(Instant::now());
        if let Err(e) = self.refresh().await {
            tracing::warn!(error = %e, "terminal token refresh on a miss failed; the old cache stays");
        }
        drop(last);
        self.check(token)
    }

    /// Refreshes every `every`, and after a failure waits the backoff's next delay (1 s, 2 s,
    /// 4 s … 5 min) before trying again, until `stop`.
    pub async fn keep_fresh(self: Arc<Self>, stop: CancellationToken) {
        let mut retrier = self.policy.backoff.retrier();
        loop {
            let wait = match self.refresh().await {
                Ok(n) => {
                    retrier.reset();
                    tracing::debug!(tokens = n, "terminal token hashes refreshed");
                    self.policy.every
                }
                Err(e) => {
                    let wait = retrier.next_delay();
                    tracing::warn!(error = %e, failures = retrier.failures(), retry_in = ?wait, "terminal token hashes unavailable; the old cache stays");
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// The real fetch: the control plane's hashes endpoint with the node's bearer credential.
#[derive(Debug)]
pub struct HttpFetcher {
    url: String,
    credential: String,
    client: reqwest::Client,
}

impl HttpFetcher {
    pub fn new(plane: &str, org: &str, credential: &str) -> reqwest::Result<Self> {
        let client = citadel_transports::http::build_client(|| {
            reqwest::Client::builder().timeout(Duration::from_secs(15))
        })?;
        Ok(Self {
            url: format!(
                "{}/api/fabric/terminal/tokens/{org}/hashes",
                plane.trim_end_matches('/')
            ),
            credential: credential.to_string(),
            client,
        })
    }
}

#[async_trait::async_trait]
impl FetchHashes for HttpFetcher {
    async fn fetch(&self) -> Result<Vec<TokenRecord>, FetchError> {
        let err = |e: reqwest::Error| FetchError(e.without_url().to_string());
        let resp = self
            .client
            .get(&self.url)
            .bearer_auth(&self.credential)
            .send()
            .await
            .map_err(err)?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError(format!("the control plane answered {status}")));
        }
        let body: HashesResponse = resp.json().await.map_err(err)?;
        Ok(body.tokens)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(token: &str, org: &str, expires_at: Option<&str>) -> TokenRecord {
        TokenRecord {
            hash: token_hash(token),
            user_id: format!("user-{token}"),
            org_id: org.into(),
            expires_at: expires_at.map(Into::into),
        }
    }

    #[test]
    fn org_and_expiry_are_enforced() {
        let set = TokenSet::from_records(vec![
            record("a", "org1", None),
            record("b", "org2", None),
            record("c", "org1", Some("2020-01-01T00:00:00Z")),
            record("d", "org1", Some("2999-01-01T00:00:00Z")),
            record("e", "org1", Some("yesterday")),
        ]);
        let now = SystemTime::now();
        assert!(matches!(set.check("a", "org1", now), Verdict::Valid(u) if u.user_id == "user-a"));
        assert_eq!(set.check("b", "org1", now), Verdict::WrongOrg);
        assert_eq!(set.check("c", "org1", now), Verdict::Expired);
        assert!(matches!(set.check("d", "org1", now), Verdict::Valid(_)));
        assert_eq!(set.check("e", "org1", now), Verdict::Expired);
        assert_eq!(set.check("zz", "org1", now), Verdict::Unknown);
    }

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
