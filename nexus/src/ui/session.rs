//! The console's sessions: a random id (the cookie's value) standing for a signed-in person and
//! what they may do (the admin, or read-only, with the console token it was opened with), kept
//! in the store's `console_sessions` tree so they survive a restart: only the SHA-256 of the id
//! is kept, with the role, the token's id, when it was opened and last used. A session ends
//! after [`IDLE`] without a request, at logout, or when [`MAX_SESSIONS`] newer ones push it out.
//! Use is written back at most once per [`SEEN_EVERY`] per session, not per request. The cookie
//! and its flags are decided here too. Time is passed in; the caller flushes the store where an
//! answer must be durable. It must never hold or log the token a session was opened with, nor
//! keep a session id in the store.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::credentials::sha256_hex;
use crate::store::{Store, StoreError};

/// The cookie that carries the session id.
pub const COOKIE: &str = "citadel_console";
/// A session unused this long is over.
pub const IDLE: Duration = Duration::from_secs(12 * 3600);
/// The most sessions held; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1024;
/// A session's use is written to the store at most this often.
pub const SEEN_EVERY: Duration = Duration::from_secs(60);

/// What a session may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
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
/// A session as kept (by the SHA-256 of its id).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    role: Role,
    /// The console token it was opened with (none: the admin token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_id: Option<String>,
    created_ms: u64,
    last_ms: u64,
    /// The last use written to the store.
    #[serde(skip)]
    stored_ms: u64,
}

/// A live session: its role and the console token it was opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub role: Role,
    pub token_id: Option<String>,
}

/// The live sessions: in memory, by the hash of their id, and in the store.
#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    tree: sled::Tree,
    store: Arc<Store>,
}

impl Sessions {
    /// The sessions kept in `store`, less those expired at `now_ms`.
    pub fn load(store: Arc<Store>, now_ms: u64) -> Result<Self, StoreError> {
        let tree = store.tree("console_sessions")?;
        let mut map = HashMap::new();
        for (k, v) in tree.iter().filter_map(Result::ok) {
            let key = String::from_utf8_lossy(&k).into_owned();
            match serde_json::from_slice::<Session>(&v) {
                Ok(mut s) if fresh(&s, now_ms) => {
                    s.stored_ms = s.last_ms;
                    map.insert(key, s);
                }
                _ => {
                    let _ = tree.remove(&k);
                    store.wrote();
                }
            }
        }
        Ok(Self {
            map: Mutex::new(map),
            tree,
            store,
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, key: &str, s: &Session) {
        match serde_json::to_vec(s) {
            Ok(bytes) => match self.tree.insert(key.as_bytes(), bytes) {
                Ok(_) => self.store.wrote(),
                Err(e) => tracing::error!(error = %e, "writing a console session"),
            },
            Err(e) => tracing::error!(error = %e, "encoding a console session"),
        }
    }

    fn remove(&self, m: &mut HashMap<String, Session>, key: &str) {
        m.remove(key);
        match self.tree.remove(key.as_bytes()) {
            Ok(_) => self.store.wrote(),
            Err(e) => tracing::error!(error = %e, "removing a console session"),
        }
    }

    /// Opens a session with a fresh random id, dropping expired sessions and, beyond
    /// [`MAX_SESSIONS`], the least recently used.
    pub fn open(&self, role: Role, token_id: Option<String>, now_ms: u64) -> String {
        let id = crate::ids::new_secret();
        let mut m = self.lock();
        let gone: Vec<String> = m
            .iter()
            .filter(|(_, s)| !fresh(s, now_ms))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&mut m, &k);
        }
        while m.len() >= MAX_SESSIONS {
            let oldest = m
                .iter()
                .min_by_key(|(_, s)| s.last_ms)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => self.remove(&mut m, &k),
                None => break,
            }
        }
        let s = Session {
            role,
            token_id,
            created_ms: now_ms,
            last_ms: now_ms,
            stored_ms: now_ms,
        };
        let key = sha256_hex(&id);
        self.put(&key, &s);
        m.insert(key, s);
        id
    }

    /// A live session, which this use keeps alive (written back once per [`SEEN_EVERY`]); an
    /// expired one is ended.
    pub fn check(&self, id: &str, now_ms: u64) -> Option<Live> {
        let key = sha256_hex(id);
        let mut m = self.lock();
        let s = m.get_mut(&key)?;
        if !fresh(s, now_ms) {
            self.remove(&mut m, &key);
            return None;
        }
        s.last_ms = now_ms;
        let live = Live {
            role: s.role,
            token_id: s.token_id.clone(),
        };
        if due(s, now_ms) {
            s.stored_ms = now_ms;
            let s = s.clone();
            self.put(&key, &s);
        }
        Some(live)
    }

    /// Ends a session (logout, or its token revoked).
    pub fn end(&self, id: &str) {
        let mut m = self.lock();
        self.remove(&mut m, &sha256_hex(id));
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

/// Whether a session's use is due to be written back.
fn due(s: &Session, now_ms: u64) -> bool {
    now_ms.saturating_sub(s.stored_ms) >= SEEN_EVERY.as_millis() as u64
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

    fn sessions() -> (tempfile::TempDir, Arc<Store>, Sessions) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let s = Sessions::load(store.clone(), 0).unwrap();
        (dir, store, s)
    }

    fn role(l: Option<Live>) -> Option<Role> {
        l.map(|l| l.role)
    }

    #[test]
    fn sessions_expire_when_idle_and_use_keeps_them() {
        let (_d, _store, s) = sessions();
        let idle = IDLE.as_millis() as u64;
        let a = s.open(Role::ReadOnly, Some("ct-1".into()), 0);
        assert_eq!(a.len(), 64);
        let live = s.check(&a, idle - 1).unwrap();
        assert_eq!(live.token_id.as_deref(), Some("ct-1"));
        assert_eq!(
            role(s.check(&a, 2 * idle - 2)),
            Some(Role::ReadOnly),
            "use kept it"
        );
        assert_eq!(role(s.check(&a, 3 * idle)), None);
        assert_eq!(role(s.check(&a, 3 * idle)), None, "ended for good");
        let b = s.open(Role::Admin, None, 0);
        s.end(&b);
        assert_eq!(role(s.check(&b, 1)), None);
        assert_eq!(role(s.check("not-a-session", 1)), None);
    }

    #[test]
    fn the_count_is_bounded_and_the_least_recently_used_goes() {
        let (_d, store, s) = sessions();
        let first = s.open(Role::Admin, None, 0);
        let second = s.open(Role::Admin, None, 1);
        s.check(&first, 2);
        for n in 0..MAX_SESSIONS {
            s.open(Role::Admin, None, 3 + n as u64);
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(role(s.check(&first, 5_000)), None);
        assert_eq!(role(s.check(&second, 5_000)), None);
        let again = Sessions::load(store, 5_000).unwrap();
        assert_eq!(
            again.len(),
            MAX_SESSIONS,
            "the pushed-out ones left the store too"
        );
    }

    #[test]
    fn sessions_are_kept_by_hash_and_reload_with_their_last_written_use() {
        let (_d, store, s) = sessions();
        let id = s.open(Role::ReadOnly, Some("ct-9".into()), 1_000);
        let kept: Vec<String> = s
            .tree
            .iter()
            .filter_map(Result::ok)
            .map(|(k, v)| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&k),
                    String::from_utf8_lossy(&v)
                )
            })
            .collect();
        assert_eq!(kept.len(), 1);
        assert!(
            !kept[0].contains(&id),
            "the id itself is never kept: {}",
            kept[0]
        );
        let again = Sessions::load(store.clone(), 2_000).unwrap();
        let live = again.check(&id, 2_000).unwrap();
        assert_eq!(
            live,
            Live {
                role: Role::ReadOnly,
                token_id: Some("ct-9".into())
            }
        );
        let idle = IDLE.as_millis() as u64;
        assert!(
            Sessions::load(store, 1_000 + idle).unwrap().is_empty(),
            "expired at load"
        );
    }

    #[test]
    fn use_is_written_back_at_most_once_per_interval() {
        let (_d, store, s) = sessions();
        let id = s.open(Role::Admin, None, 0);
        let every = SEEN_EVERY.as_millis() as u64;
        let writes = |s: &Sessions| {
            let before = s.tree.checksum().unwrap();
            move |s: &Sessions| s.tree.checksum().unwrap() != before
        };
        let changed = writes(&s);
        for t in 1..every {
            s.check(&id, t);
        }
        assert!(!changed(&s), "uses within the interval are not written");
        s.check(&id, every);
        assert!(changed(&s), "the first use after it is");
        let kept = Sessions::load(store, every).unwrap();
        let k = kept.lock().values().next().unwrap().last_ms;
        assert_eq!(k, every);
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
