//! The node's side of the mesh (docs/mesh.md): its key ([`key`], `DATA_DIR/mesh.key`), its
//! registration and network map ([`coord`]), and its connection to the control plane's relay
//! ([`relay`]). The data plane (WireGuard and the userspace network stack) plugs onto the
//! channels these expose. This module holds no tunnel state, and must never log the node's
//! private key or its credential.

pub mod coord;
pub mod key;
pub mod relay;

/// A peer's public key as the relay channels carry it (the data plane's `PeerKey` wraps it).
pub type PeerKey = [u8; 32];

/// The WebSocket URL of a control plane's `path`: `http` becomes `ws`, `https` `wss` (as the
/// websocket transport's URL is made).
pub fn ws_url(plane: &str, path: &str) -> anyhow::Result<String> {
    use citadel_transports::websocket::{protocol::PATH, ws_url};
    let push = ws_url(plane)?;
    Ok(format!(
        "{}{path}",
        push.strip_suffix(PATH).unwrap_or(&push)
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ws_urls_follow_the_scheme() {
        let u = |p: &str| super::ws_url(p, "/x").unwrap();
        assert_eq!(u("http://127.0.0.1:7411/"), "ws://127.0.0.1:7411/x");
        assert_eq!(u("https://plane.example"), "wss://plane.example/x");
        assert!(super::ws_url("ftp://x", "/x").is_err());
    }
}
