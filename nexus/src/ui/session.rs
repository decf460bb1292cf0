//! The console's sessions: a random id (the cookie's value) standing for a signed-in person and
//! what they may do (the admin, or read-only), kept in memory only, ended after
//! [`IDLE`] without a request, at logout, or when [`MAX_SESSIONS`] newer ones push it out. The
//! cookie and its flags are decided here too. Time is passed in. It must never hold or log the
//! token a session was opened with.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

/// The cookie that carries the session id.
pub const COOKIE: &str = "citadel_console";
/// A session unused this long is over.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1024;

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything the console offers.
    Admin,
    /// Sees everything, changes nothing.
    ReadOnly,
}

impl Role {
    pub fn may_act(self) -> bool {
        self == Role::Admin
    }
}

#[derive(Debug, Clone, Copy)]
struct Session {
    role: Role,
    last_ms: u64,
}

/// The live sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a session with a fresh random id, dropping expired sessions and, beyond
    /// [`MAX_SESSIONS`], the least recently used.
    pub fn open(&self, role: Role, now_ms: u64) -> String {
        let id = crate::ids::new_secret();
        let mut m = self.lock();
        m.retain(|_, s| fresh(s, now_ms));
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
        m.insert(
            id.clone(),
            Session {
                role,
                last_ms: now_ms,
            },
        );
        id
    }

    /// The role of a live session, which this use keeps alive; an expired one is ended.
    pub fn check(&self, id: &str, now_ms: u64) -> Option<Role> {
        let mut m = self.lock();
        let s = m.get_mut(id)?;
        if !fresh(s, now_ms) {
            m.remove(id);
            return None;
        }
        s.last_ms = now_ms;
        Some(s.role)
    }

    /// Ends a session (logout).
    pub fn end(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn fresh(s: &Session, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.last_ms) < IDLE.as_millis() as u64
}

/// The session id in a `Cookie` header, if any.
pub fn from_cookie_header(header: &str) -> Option<&str> {
    header
        .split(';')
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// The `Set-Cookie` value that hands out session `id`; `secure` when served over TLS.
pub fn set_cookie(id: &str, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/ui{secure}")
}

/// The `Set-Cookie` value that removes the cookie (logout).
pub fn clear_cookie(secure: bool) -> String {
    format!("{}; Max-Age=0", set_cookie("", secure))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_use_keeps_them() {
        let s = Sessions::default();
        let idle = IDLE.as_millis() as u64;
        let a = s.open(Role::ReadOnly, 0);
        assert_eq!(a.len(), 64);
        assert_eq!(s.check(&a, idle - 1), Some(Role::ReadOnly));
        assert_eq!(
            s.check(&a, 2 * idle - 2),
            Some(Role::ReadOnly),
            "use kept it"
        );
        assert_eq!(s.check(&a, 3 * idle), None);
        assert_eq!(s.check(&a, 3 * idle), None, "ended for good");
        let b = s.open(Role::Admin, 0);
        s.end(&b);
        assert_eq!(s.check(&b, 1), None);
        assert_eq!(s.check("not-a-session", 1), None);
    }

    #[test]
    fn the_count_is_bounded_and_the_least_recently_used_goes() {
        let s = Sessions::default();
        let first = s.open(Role::Admin, 0);
        let second = s.open(Role::Admin, 1);
        s.check(&first, 2);
        for n in 0..MAX_SESSIONS {
            s.open(Role::Admin, 3 + n as u64);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.check(&first, 5_000), None);
        assert_eq!(s.check(&second, 5_000), None);
    }

    #[test]
    fn cookies_carry_the_flags_and_are_found_among_others() {
        let c = set_cookie("abc", false);
        assert_eq!(
            c,
            "citadel_console=abc; HttpOnly; SameSite=Strict; Path=/ui"
        );
        assert!(set_cookie("abc", true).ends_with("; Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
        assert_eq!(
            from_cookie_header("a=1; citadel_console=xyz; b=2"),
            Some("xyz")
        );
        assert_eq!(from_cookie_header("a=1"), None);
        assert_eq!(from_cookie_header("citadel_console="), None);
    }
}
