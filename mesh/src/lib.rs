//! citadel's mesh data plane: userspace WireGuard (one `boringtun` tunnel per peer) under a
//! userspace TCP/IP stack (smoltcp) on the node's mesh address, fed by datagrams the control
//! plane relays. No TUN device, no root, no sockets of its own: its only I/O is two channels of
//! `(PeerKey, Bytes)` and a watch of the network map. It never creates a tunnel for a key outside
//! the map and never hands the relay anything but WireGuard ciphertext.

mod api;
pub mod bench;
pub mod core;
mod driver;
mod error;
pub mod map;
mod ping;
pub mod stack;
mod stream;

pub use crate::api::{Mesh, MeshStatus, PeerStatus, DIAL_TIMEOUT};
pub use crate::core::{Core, Event};
pub use crate::error::MeshError;
pub use crate::map::{MapNode, NetworkMap, PeerKey};
pub use crate::stream::{MeshListener, MeshStream};
