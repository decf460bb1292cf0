//! The mesh's identities and network map: the node key's public half (`PeerKey`), written base64
//! on the wire, and the JSON network map the control plane pushes. Pure data with serde; it never
//! holds a private key and never does I/O.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use x25519_dalek::{PublicKey, StaticSecret};

/// A node's mesh identity: its x25519 public key (32 bytes), base64 (standard, padded) on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey(pub [u8; 32]);

impl PeerKey {
    /// The public key of a node secret.
    pub fn from_secret(secret: &StaticSecret) -> Self {
        PeerKey(PublicKey::from(secret).to_bytes())
    }

    /// The key as x25519's type, for the WireGuard handshake.
    pub fn public(&self) -> PublicKey {
        PublicKey::from(self.0)
    }
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, thiserror::Error)]
#[error("a mesh public key is 32 bytes in standard base64")]
pub struct BadKey;

impl FromStr for PeerKey {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<Self, BadKey> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| BadKey)?;
        Ok(PeerKey(bytes.try_into().map_err(|_| BadKey)?))
    }
}

impl Serialize for PeerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PeerKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One node of the map: the node itself or a peer of its organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    pub node_id: String,
    pub name: String,
    pub public_key: PeerKey,
    pub mesh_ip: Ipv4Addr,
}

/// The network map the control plane pushes: the node itself and the peers of its organization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    pub version: u64,
    #[serde(rename = "self")]
    pub self_node: MapNode,
    pub peers: Vec<MapNode>,
}

impl NetworkMap {
    /// The peer with this mesh IP or this name, never the node itself.
    pub fn find_peer(&self, target: &str) -> Option<&MapNode> {
        let ip = target.parse::<Ipv4Addr>().ok();
        self.peers
            .iter()
            .find(|p| Some(p.mesh_ip) == ip || p.name == target)
    }

    /// The peer with this key.
    pub fn find_key(&self, key: &PeerKey) -> Option<&MapNode> {
        self.peers.iter().find(|p| p.public_key == *key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_round_trips_with_the_wire_field_names() {
        let key = PeerKey([7; 32]);
        let json = format!(
            r#"{{"version":3,"self":{{"node_id":"n1","name":"a","public_key":"{key}","mesh_ip":"100.64.0.1"}},"peers":[]}}"#
        );
        let map: NetworkMap = serde_json::from_str(&json).unwrap();
        assert_eq!(map.self_node.public_key, key);
        assert_eq!(serde_json::to_string(&map).unwrap(), json);
        assert!("short".parse::<PeerKey>().is_err());
    }
}
