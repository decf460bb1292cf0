//! The control plane's clock and fresh identifiers: job ids, lease ids and secrets. The only
//! place the control plane reads the wall clock or draws random numbers; the queue
//! ([`super::queue`]) is given both.

use std::time::{SystemTime, UNIX_EPOCH};

/// The wall clock in Unix milliseconds.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    if getrandom::fill(&mut buf).is_err() {
        buf.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// A fresh job id: 32 hex digits in the 8-4-4-4-12 layout of a UUID.
pub fn new_job_id() -> String {
    let h = random_hex(16);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A fresh lease id: 16 hex digits.
pub fn new_lease_id() -> String {
    random_hex(8)
}

/// A secret: 32 random bytes as hex.
pub fn new_secret() -> String {
    random_hex(32)
}
