//! The terminal's admission limits, as pure decisions with the time passed in: a token bucket
//! per client (keyed by the peer address; `X-Forwarded-For` only when the peer is a configured
//! proxy), forgotten after a while unused; which address a request comes from; which browser
//! origins may open a terminal. The connection cap is a semaphore in the server. This module
//! never does I/O.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

/// A token bucket's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Tokens added per second.
    pub per_second: f64,
    /// The most tokens a bucket holds (requests allowed at once).
    pub burst: f64,
    /// A bucket unused this long is dropped.
    pub forget_after: Duration,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            per_second: 1.0,
            burst: 5.0,
            forget_after: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One token bucket per client.
#[derive(Debug)]
pub struct RateLimiter {
    config: RateConfig,
    buckets: HashMap<IpAddr, Bucket>,
}

impl RateLimiter {
    pub fn new(config: RateConfig) -> Self {
        Self {
            config,
            buckets: HashMap::new(),
        }
    }

    /// Whether `client` may make a request at `now` (taking a token if so).
    pub fn allow(&mut self, client: IpAddr, now: Instant) -> bool {
        let c = self.config;
        let b = self.buckets.entry(client).or_insert(Bucket {
            tokens: c.burst,
            last: now,
        });
        let earned = now.saturating_duration_since(b.last).as_secs_f64() * c.per_second;
        b.tokens = (b.tokens + earned).min(c.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Drops the buckets unused for `forget_after`.
    pub fn sweep(&mut self, now: Instant) {
        let keep = self.config.forget_after;
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < keep);
    }

    /// How many clients have a bucket.
    pub fn clients(&self) -> usize {
        self.buckets.len()
    }
}

/// The client a request counts against: the peer, or, when the peer is a trusted proxy, the
/// last address of its `X-Forwarded-For` (the one that proxy saw).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpAddr]) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    forwarded_for
        .and_then(|v| v.rsplit(',').next())
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or(peer)
}

/// Whether a browser `Origin` may open a terminal: none, localhost / 127.0.0.1 / ::1, or one of
/// `allowed` (compared exactly, or `*` for any).
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    let Some(origin) = origin.map(str::trim).filter(|o| !o.is_empty()) else {
        return true;
    };
    if allowed
        .iter()
        .any(|a| a == "*" || a.eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let rest = origin.split_once("://").map_or(origin, |(_, r)| r);
    let host = if let Some(v6) = rest.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        rest.split([':', '/']).next().unwrap_or("")
    };
    matches!(host, "localhost" | "127.0.0.1" | "::1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_burst_of_five_then_one_a_second() {
        let mut r = RateLimiter::new(RateConfig::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..5).all(|_| r.allow(ip, t0)));
        assert!(!r.allow(ip, t0));
        assert!(r.allow("10.0.0.2".parse().unwrap(), t0), "per client");
        assert!(r.allow(ip, t0 + Duration::from_secs(1)));
        assert!(!r.allow(ip, t0 + Duration::from_secs(1)));
        r.sweep(t0 + Duration::from_millis(600_500));
        assert_eq!(
            r.clients(),
            1,
            "the bucket used at 1 s is kept, the other one dropped"
        );
        r.sweep(t0 + Duration::from_secs(602));
        assert_eq!(r.clients(), 0);
    }

    proptest! {
        /// Against the model: over any schedule, allowed ≤ burst + rate × elapsed.
        #[test]
        fn never_more_than_burst_plus_rate(gaps in proptest::collection::vec(0u64..3000, 1..200)) {
            let mut r = RateLimiter::new(RateConfig::default());
            let ip: IpAddr = "10.0.0.1".parse().unwrap();
            let t0 = Instant::now();
            let (mut t, mut allowed) = (t0, 0u32);
            for g in gaps {
                t += Duration::from_millis(g);
                allowed += u32::from(r.allow(ip, t));
            }
            let bound = 5.0 + (t - t0).as_secs_f64();
            prop_assert!(f64::from(allowed) <= bound + 1e-9, "{allowed} > {bound}");
        }
    }

    #[test]
    fn forwarded_for_only_from_the_proxy() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let other: IpAddr = "10.0.0.8".parse().unwrap();
        let xff = Some("1.2.3.4, 5.6.7.8");
        assert_eq!(client_ip(other, xff, &[proxy]), other);
        assert_eq!(
            client_ip(proxy, xff, &[proxy]),
            "5.6.7.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, None, &[proxy]), proxy);
    }

    #[test]
    fn origins() {
        let none: [String; 0] = [];
        assert!(origin_allowed(None, &none));
        assert!(origin_allowed(Some(""), &none));
        assert!(origin_allowed(Some("http://localhost:3000"), &none));
        assert!(origin_allowed(Some("http://127.0.0.1"), &none));
        assert!(origin_allowed(Some("http://[::1]:80"), &none));
        assert!(!origin_allowed(Some("http://localhost.evil.com"), &none));
        assert!(!origin_allowed(Some("https://evil.com"), &none));
        assert!(origin_allowed(
            Some("https://app.example.com"),
            &["https://app.example.com".to_string()]
        ));
    }
}
