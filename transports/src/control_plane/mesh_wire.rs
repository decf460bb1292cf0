//! The mesh's wire types, defined once for the control plane and the node (docs/mesh.md): a
//! node's public key ([`MeshKey`], base64 on the wire), the registration's request and answer,
//! the network map, the relay's binary frame (`[32-byte key | WireGuard datagram]`) and the
//! check that a datagram is shaped like WireGuard ([`WgType::of`]). Plain data and pure
//! functions; it must never do I/O, and never hold or show a private key.

use std::fmt;
use std::net::Ipv4Addr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The block every mesh address comes from (100.64.0.0/10, shared address space).
pub const MESH_PREFIX: &str = "100.64.0.0/10";
/// The first address of [`MESH_PREFIX`].
pub const MESH_NET: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// The prefix length of [`MESH_PREFIX`].
pub const MESH_PREFIX_LEN: u8 = 10;
/// The length of a public key, and of the key that starts every relay frame.
pub const KEY_LEN: usize = 32;
/// The largest relay frame either side sends or accepts: a key and a datagram of at most 64 KiB.
pub const MAX_FRAME: usize = KEY_LEN + 65_536;

/// A node's x25519 public key: its mesh identity. Written base64 (standard alphabet, padded).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MeshKey(pub [u8; KEY_LEN]);

impl MeshKey {
    /// Reads a base64 key: exactly 32 bytes, not all zero (no node has that key).
    pub fn from_base64(s: &str) -> Result<Self, String> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|e| format!("the public key is not base64: {e}"))?;
        let key: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("a public key is {KEY_LEN} bytes, not {}", b.len()))?;
        if key == [0; KEY_LEN] {
            return Err("the all-zero public key is not a node's key".into());
        }
        Ok(Self(key))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }
}

impl fmt::Display for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for MeshKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MeshKey({})", self.to_base64())
    }
}

impl Serialize for MeshKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for MeshKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        MeshKey::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// `POST /api/fabric/mesh/register`'s body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    pub public_key: MeshKey,
}

/// `POST /api/fabric/mesh/register`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub node_id: String,
    pub org_id: String,
    pub mesh_ip: Ipv4Addr,
    /// Always [`MESH_PREFIX`].
    pub prefix: String,
}

/// A node as the network map shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapNode {
    pub node_id: String,
    pub name: String,
    pub public_key: MeshKey,
    pub mesh_ip: Ipv4Addr,
}

/// `GET /api/fabric/mesh/map`'s answer: the caller and the other registered, live nodes of its
/// organization (never itself, never another organization's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkMap {
    /// Changes whenever the map of the organization may have changed.
    pub version: u64,
    #[serde(rename = "self")]
    pub me: MapNode,
    pub peers: Vec<MapNode>,
}

/// A relay frame: `key` (the destination from a node, the source to a node) then the datagram.
pub fn encode_frame(key: &[u8; KEY_LEN], datagram: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(KEY_LEN + datagram.len());
    f.extend_from_slice(key);
    f.extend_from_slice(datagram);
    f
}

/// The key and the datagram of a relay frame; `None` when it is too short to hold a key.
pub fn split_frame(frame: &[u8]) -> Option<([u8; KEY_LEN], &[u8])> {
    let (key, datagram) = frame.split_at_checked(KEY_LEN)?;
    Some((key.try_into().ok()?, datagram))
}

/// The four WireGuard message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WgType {
    HandshakeInitiation,
    HandshakeResponse,
    CookieReply,
    Transport,
}

impl WgType {
    pub const ALL: [WgType; 4] = [
        WgType::HandshakeInitiation,
        WgType::HandshakeResponse,
        WgType::CookieReply,
        WgType::Transport,
    ];

    /// The datagram's type when it is shaped like WireGuard: a type byte 1–4, three zero bytes,
    /// and the exact length of its type (148, 92, 64) or, for transport data, at least a header
    /// and a tag (32, a keepalive).
    pub fn of(datagram: &[u8]) -> Option<Self> {
        let (head, _) = datagram.split_at_checked(4)?;
        if head[1..] != [0, 0, 0] {
            return None;
        }
        let (ty, fits) = match head[0] {
            1 => (WgType::HandshakeInitiation, datagram.len() == 148),
            2 => (WgType::HandshakeResponse, datagram.len() == 92),
            3 => (WgType::CookieReply, datagram.len() == 64),
            4 => (WgType::Transport, datagram.len() >= 32),
            _ => return None,
        };
        fits.then_some(ty)
    }

    /// The name `/metrics` labels it with.
    pub fn label(self) -> &'static str {
        match self {
            WgType::HandshakeInitiation => "handshake_initiation",
            WgType::HandshakeResponse => "handshake_response",
            WgType::CookieReply => "cookie_reply",
            WgType::Transport => "transport",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_32_bytes_of_padded_base64() {
        let k = MeshKey([7; 32]);
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(text, format!("\"{}\"", STANDARD.encode([7u8; 32])));
        assert_eq!(serde_json::from_str::<MeshKey>(&text).unwrap(), k);
        for bad in [
            "",
            "abc",
            "!!!!",
            &STANDARD.encode([1u8; 31]),
            &STANDARD.encode([0u8; 32]),
        ] {
            assert!(MeshKey::from_base64(bad).is_err(), "{bad}");
        }
        let map = NetworkMap {
            version: 3,
            me: MapNode {
                node_id: "n1".into(),
                name: "a".into(),
                public_key: k,
                mesh_ip: Ipv4Addr::new(100, 64, 0, 1),
            },
            peers: vec![],
        };
        let v = serde_json::to_value(&map).unwrap();
        assert_eq!(v["self"]["mesh_ip"], "100.64.0.1");
        assert_eq!(v["self"]["public_key"], k.to_base64());
    }

    #[test]
    fn wireguard_shapes_are_exact() {
        let dg = |ty: u8, len: usize| {
            let mut d = vec![0u8; len];
            d[0] = ty;
            d
        };
        assert_eq!(WgType::of(&dg(1, 148)), Some(WgType::HandshakeInitiation));
        assert_eq!(WgType::of(&dg(2, 92)), Some(WgType::HandshakeResponse));
        assert_eq!(WgType::of(&dg(3, 64)), Some(WgType::CookieReply));
        assert_eq!(WgType::of(&dg(4, 32)), Some(WgType::Transport));
        assert_eq!(WgType::of(&dg(4, 1400)), Some(WgType::Transport));
        for (ty, len) in [
            (1, 147),
            (1, 149),
            (2, 148),
            (3, 92),
            (4, 31),
            (0, 148),
            (5, 64),
        ] {
            assert_eq!(WgType::of(&dg(ty, len)), None, "{ty} {len}");
        }
        let mut d = dg(1, 148);
        d[2] = 1;
        assert_eq!(WgType::of(&d), None);
        assert_eq!(WgType::of(b"GET / HTTP/1.1\r\n"), None);
    }

    proptest! {
        #[test]
        fn a_frame_splits_back_into_its_key_and_datagram(
            key in prop::array::uniform32(any::<u8>()),
            datagram in prop::collection::vec(any::<u8>(), 0..300),
        ) {
            let f = encode_frame(&key, &datagram);
            let (k, d) = split_frame(&f).unwrap();
            prop_assert_eq!(k, key);
            prop_assert_eq!(d, &datagram[..]);
            prop_assert!(split_frame(&f[..KEY_LEN.min(f.len()) - 1]).is_none());
        }

        /// Whatever the bytes, a datagram passes only with a type byte 1-4 and three zero bytes.
        #[test]
        fn only_the_wireguard_header_passes(d in prop::collection::vec(any::<u8>(), 0..200)) {
            if WgType::of(&d).is_some() {
                prop_assert!((1..=4).contains(&d[0]) && d[1..4] == [0, 0, 0]);
            }
        }
    }
}
