//! Device authorization on the control plane (docs/wire-format.md#device-authorization, RFC 8628 style): a node asks to join
//! (`start`), a person approves its user code (`citadel nexus approve CODE` or the `/device`
//! page, both with the control plane's token, optionally naming the node's organization), and the
//! node's polls (`token`) learn it was approved, and in which organization (the API issues its
//! credential, `credentials.rs`). Pending requests live in memory only (they expire within minutes; a restarted
//! control plane forgets them and the node runs `citadel init` again). This module owns the
//! codes, their expiry and the polling rules (`slow_down` adds 5 s); it never issues a credential
//! to an unapproved code and never logs a device code or a token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How long a device code lives, and the polling interval a node is told to keep.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSettings {
    pub ttl: Duration,
    pub interval: Duration,
}

impl Default for DeviceSettings {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(600),
            interval: Duration::from_secs(5),
        }
    }
}

/// What a node says about itself when it asks to join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    pub client_id: String,
    #[serde(default)]
    pub client_version: Option<String>,
    pub hostname: String,
    #[serde(default)]
    pub machine_id: Option<String>,
}

/// The answer to `start` (docs/wire-format.md#device-authorization).
#[derive(Debug, Clone, Serialize)]
pub struct StartResponse {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: String,
    pub expires_in: u64,
    pub interval: u64,
}

/// The answer to a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Approved: the node's id and organization; the API adds the credential.
    Approved {
        node_id: String,
        node_name: String,
        org: String,
    },
    /// The RFC 8628 error codes.
    Pending,
    SlowDown,
    Expired,
    Denied,
}

impl Poll {
    pub fn error_code(&self) -> Option<&'static str> {
        match self {
            Poll::Approved { .. } => None,
            Poll::Pending => Some("authorization_pending"),
            Poll::SlowDown => Some("slow_down"),
            Poll::Expired => Some("expired_token"),
            Poll::Denied => Some("access_denied"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Decision {
    Waiting,
    /// Approved into this organization.
    Approved(String),
    Denied,
}

#[derive(Debug)]
struct Pending {
    user_code: String,
    hostname: String,
    machine_id: Option<String>,
    expires: Instant,
    interval: Duration,
    last_poll: Option<Instant>,
    decision: Decision,
}

/// A pending request as shown to the approver.
#[derive(Debug, Clone, Serialize)]
pub struct PendingView {
    pub user_code: String,
    pub hostname: String,
    pub expires_in: u64,
}

/// Why an approval was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApproveError {
    #[error("no pending device authorization has the code {0} (check it, or it expired: run `citadel init` again on the node)")]
    Unknown(String),
    #[error("the code {0} was already decided")]
    Decided(String),
}

/// At most this many requests wait at once; more are refused until some expire or are decided.
pub const MAX_PENDING: usize = 1024;

/// The pending device authorizations of one control plane.
#[derive(Debug, Default)]
pub struct DeviceAuth {
    settings: DeviceSettings,
    pending: Mutex<HashMap<String, Pending>>,
}

/// The user-code alphabet: consonants only, no look-alikes (RFC 8628 §6.1).
const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// Normalises what a person typed: upper case, dashes and spaces dropped, then `XXXX-XXXX`.
pub fn normalise_user_code(code: &str) -> String {
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if clean.len() == 8 {
        format!("{}-{}", &clean[..4], &clean[4..])
    } else {
        clean
    }
}

impl DeviceAuth {
    pub fn new(settings: DeviceSettings) -> Self {
        Self {
            settings,
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a request; `base_url` is how the node reached us (for the verification URI).
    /// `None` when [`MAX_PENDING`] requests are already waiting.
    pub fn start(&self, req: &StartRequest, base_url: &str) -> Option<StartResponse> {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, p| p.expires + Duration::from_secs(60) > now);
        if map.len() >= MAX_PENDING {
            return None;
        }
        let user_code = loop {
            let raw: String = (0..8)
                .map(|_| ALPHABET[fastrand::usize(..ALPHABET.len())] as char)
                .collect();
            let code = normalise_user_code(&raw);
            if map.values().all(|p| p.user_code != code) {
                break code;
            }
        };
        let device_code = super::store::new_secret();
        map.insert(
            device_code.clone(),
            Pending {
                user_code: user_code.clone(),
                hostname: req.hostname.clone(),
                machine_id: req.machine_id.clone(),
                expires: now + self.settings.ttl,
                interval: self.settings.interval,
                last_poll: None,
                decision: Decision::Waiting,
            },
        );
        let verification_uri = format!("{base_url}/device");
        Some(StartResponse {
            verification_uri_complete: format!("{verification_uri}?code={user_code}"),
            verification_uri,
            device_code,
            user_code,
            expires_in: self.settings.ttl.as_secs().max(1),
            interval: self.settings.interval.as_secs().max(1),
        })
    }

    /// A node's poll. Polling faster than the interval answers `slow_down` and adds 5 s to it;
    /// an approved code is answered once and then forgotten.
    pub fn poll(&self, device_code: &str) -> Poll {
        let now = Instant::now();
        let mut map = self.lock();
        let Some(p) = map.get_mut(device_code) else {
            return Poll::Expired;
        };
        if now >= p.expires {
            map.remove(device_code);
            return Poll::Expired;
        }
        let too_soon = p
            .last_poll
            .is_some_and(|t| now.duration_since(t) < p.interval);
        p.last_poll = Some(now);
        match &p.decision {
            Decision::Denied => {
                map.remove(device_code);
                Poll::Denied
            }
            Decision::Approved(_) => {
                let p = map.remove(device_code).expect("present");
                let Decision::Approved(org) = p.decision else {
                    unreachable!("matched above")
                };
                Poll::Approved {
                    node_id: node_id(p.machine_id.as_deref(), &p.hostname),
                    node_name: p.hostname,
                    org,
                }
            }
            Decision::Waiting if too_soon => {
                p.interval += Duration::from_secs(5);
                Poll::SlowDown
            }
            Decision::Waiting => Poll::Pending,
        }
    }

    /// Approves the request with this user code into organization `org`, or (`None`) denies it.
    pub fn decide(&self, user_code: &str, org: Option<&str>) -> Result<PendingView, ApproveError> {
        let code = normalise_user_code(user_code);
        let now = Instant::now();
        let mut map = self.lock();
        let p = map
            .values_mut()
            .find(|p| p.user_code == code && p.expires > now)
            .ok_or_else(|| ApproveError::Unknown(code.clone()))?;
        if p.decision != Decision::Waiting {
            return Err(ApproveError::Decided(code));
        }
        p.decision = match org {
            Some(org) => Decision::Approved(org.to_string()),
            None => Decision::Denied,
        };
        Ok(PendingView {
            user_code: p.user_code.clone(),
            hostname: p.hostname.clone(),
            expires_in: p.expires.saturating_duration_since(now).as_secs(),
        })
    }

    /// The requests waiting for a decision.
    pub fn waiting(&self) -> Vec<PendingView> {
        let now = Instant::now();
        self.lock()
            .values()
            .filter(|p| p.decision == Decision::Waiting && p.expires > now)
            .map(|p| PendingView {
                user_code: p.user_code.clone(),
                hostname: p.hostname.clone(),
                expires_in: p.expires.saturating_duration_since(now).as_secs(),
            })
            .collect()
    }
}

/// A stable node id: from the machine id when the node sent one, else a fresh one.
fn node_id(machine_id: Option<&str>, hostname: &str) -> String {
    let clean: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let suffix = match machine_id.filter(|m| m.len() >= 8) {
        Some(m) => m[..8].to_ascii_lowercase(),
        None => super::store::new_secret()[..8].to_string(),
    };
    format!("node-{clean}-{suffix}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> StartRequest {
        StartRequest {
            client_id: "citadel".into(),
            client_version: None,
            hostname: "gpu-1".into(),
            machine_id: Some("0123456789abcdef".into()),
        }
    }

    #[test]
    fn the_flow_pending_slow_down_approved_then_forgotten() {
        let auth = DeviceAuth::new(DeviceSettings {
            ttl: Duration::from_secs(60),
            interval: Duration::from_secs(5),
        });
        let s = auth.start(&req(), "http://127.0.0.1:7411").unwrap();
        assert_eq!(s.user_code.len(), 9);
        assert!(s.verification_uri_complete.ends_with(&s.user_code));
        assert_eq!(auth.poll(&s.device_code), Poll::Pending);
        assert_eq!(auth.poll(&s.device_code), Poll::SlowDown);
        assert_eq!(auth.waiting().len(), 1);
        auth.decide(&s.user_code.to_lowercase().replace('-', ""), Some("acme"))
            .unwrap();
        assert_eq!(
            auth.decide(&s.user_code, Some("acme")).unwrap_err(),
            ApproveError::Decided(s.user_code.clone())
        );
        match auth.poll(&s.device_code) {
            Poll::Approved {
                node_id,
                node_name,
                org,
            } => {
                assert_eq!(node_id, "node-gpu-1-01234567");
                assert_eq!(node_name, "gpu-1");
                assert_eq!(org, "acme");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(auth.poll(&s.device_code), Poll::Expired, "answered once");
    }

    #[test]
    fn denied_and_expired_codes() {
        let auth = DeviceAuth::new(DeviceSettings {
            ttl: Duration::from_millis(50),
            interval: Duration::from_millis(1),
        });
        let a = auth.start(&req(), "http://x").unwrap();
        auth.decide(&a.user_code, None).unwrap();
        assert_eq!(auth.poll(&a.device_code), Poll::Denied);
        let b = auth.start(&req(), "http://x").unwrap();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(auth.poll(&b.device_code), Poll::Expired);
        assert!(matches!(
            auth.decide(&b.user_code, Some("default")),
            Err(ApproveError::Unknown(_))
        ));
        assert_eq!(auth.poll("nonsense"), Poll::Expired);
    }
}
