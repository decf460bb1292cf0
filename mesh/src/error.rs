//! The mesh API's errors, each saying whether a retry can help.

use std::net::Ipv4Addr;
use std::time::Duration;

/// Why a dial or a ping failed.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// The target is neither a peer's mesh IP nor a peer's name in the current map.
    #[error(
        "{0:?} is no peer of this node's network map (a retry helps only after the map names it)"
    )]
    UnknownPeer(String),
    /// No answer in time: the peer may be offline, or may not have this node in its map.
    #[error("no answer from {ip}:{port} within {after:?}: the peer may be offline or may not have this node in its map; a retry can help")]
    Timeout {
        ip: Ipv4Addr,
        port: u16,
        after: Duration,
    },
    /// The peer answered and refused the connection (nothing listens on the port).
    #[error("{ip}:{port} refused the connection: nothing listens there (a retry will not help)")]
    Refused { ip: Ipv4Addr, port: u16 },
    /// The port is already listened on.
    #[error("mesh port {0} is already listened on")]
    PortInUse(u16),
    /// The mesh was shut down.
    #[error("the mesh is shut down (a retry will not help)")]
    Shutdown,
}

impl MeshError {
    /// Whether trying the same thing again later can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, MeshError::Timeout { .. })
    }
}
