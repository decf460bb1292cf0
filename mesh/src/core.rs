//! The sans-IO connection core: one `boringtun::noise::Tunn` per peer of the network map.
//! Inputs are datagrams from a peer key, IP packets from the local stack, map updates and timer
//! ticks, each with `now` passed in; outputs are queued datagrams for the relay, IP packets for the
//! local stack and events. It never creates a tunnel for a key outside the map, never delivers a
//! packet whose inner source is not the sending peer's mesh IP, and never touches a clock, a socket
//! or a runtime itself (boringtun keeps its own session timers, which read the clock inside it).

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use boringtun::noise::{Tunn, TunnResult};
use bytes::Bytes;
use x25519_dalek::StaticSecret;

use crate::map::{MapNode, NetworkMap, PeerKey};

/// How long the core waits for a handshake response before it sends a fresh initiation.
pub const HANDSHAKE_RETRY: Duration = Duration::from_secs(1);
/// Initiations per handshake attempt before the core stops retrying until new traffic.
const HANDSHAKE_TRIES: u32 = 20;
/// WireGuard's overhead on a data message, and its largest handshake message.
const OVERHEAD: usize = 32;
const MIN_BUF: usize = 148;

/// What the core reports besides packets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A handshake with this peer completed: a session is ready.
    HandshakeDone(PeerKey),
    /// This peer left the map; its tunnel is gone.
    PeerRemoved(PeerKey),
}

/// A peer's figures for status.
#[derive(Debug, Clone)]
pub struct PeerStats {
    pub node: MapNode,
    pub tx_bytes: u64,
    pub rx_bytes: u64,
    pub last_handshake: Option<Instant>,
}

struct Peer {
    node: MapNode,
    tunn: Box<Tunn>,
    tx_bytes: u64,
    rx_bytes: u64,
    last_handshake: Option<Instant>,
    /// When the last initiation went out while no response has come, and how many went out.
    awaiting: Option<(Instant, u32)>,
}

/// Counters of what the core refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Datagrams from keys outside the map.
    pub unknown_key: u64,
    /// Decrypted packets whose inner source was not the sender's mesh IP (or not for us).
    pub spoofed: u64,
    /// Local packets to an address that is no peer of the map.
    pub no_route: u64,
    /// Handshake initiations dropped because ours, crossing them, wins.
    pub crossed: u64,
    /// Datagrams the tunnel rejected (bad MAC, wrong key, replay, no session).
    pub rejected: u64,
}

/// The connection core of one node.
pub struct Core {
    secret: StaticSecret,
    public: PeerKey,
    own: MapNode,
    peers: HashMap<PeerKey, Peer>,
    by_ip: HashMap<Ipv4Addr, PeerKey>,
    next_index: u32,
    datagrams: VecDeque<(PeerKey, Bytes)>,
    packets: VecDeque<(PeerKey, Vec<u8>)>,
    events: VecDeque<Event>,
    refused: Refused,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("own", &self.own)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl Core {
    /// A core for the node holding `secret`, with the peers of `map`.
    pub fn new(secret: StaticSecret, map: &NetworkMap) -> Self {
        let mut core = Core {
            public: PeerKey::from_secret(&secret),
            secret,
            own: map.self_node.clone(),
            peers: HashMap::new(),
            by_ip: HashMap::new(),
            next_index: 1,
            datagrams: VecDeque::new(),
            packets: VecDeque::new(),
            events: VecDeque::new(),
            refused: Refused::default(),
            buf: vec![0; 65_535 + OVERHEAD],
        };
        core.update_map(map);
        core
    }

    /// The node's own key.
    pub fn key(&self) -> PeerKey {
        self.public
    }

    /// The node's own mesh IP.
    pub fn mesh_ip(&self) -> Ipv4Addr {
        self.own.mesh_ip
    }

    /// The keys that have a tunnel: always exactly the map's peers.
    pub fn peer_keys(&self) -> impl Iterator<Item = &PeerKey> {
        self.peers.keys()
    }

    /// What the core refused so far.
    pub fn refused(&self) -> Refused {
        self.refused
    }

    /// Adopts a new map: new peers get a tunnel, removed peers lose theirs.
    pub fn update_map(&mut self, map: &NetworkMap) {
        let own_key = self.key();
        self.own = map.self_node.clone();
        let wanted: HashMap<PeerKey, &MapNode> = map
            .peers
            .iter()
            .filter(|p| p.public_key != own_key)
            .map(|p| (p.public_key, p))
            .collect();
        let gone: Vec<PeerKey> = self
            .peers
            .keys()
            .filter(|k| !wanted.contains_key(k))
            .copied()
            .collect();
        // What was queued for or from a removed peer goes with its tunnel.
        self.datagrams.retain(|(k, _)| wanted.contains_key(k));
        self.packets.retain(|(k, _)| wanted.contains_key(k));
        for key in gone {
            self.peers.remove(&key);
            tracing::debug!(peer = %key, "mesh peer removed");
            self.events.push_back(Event::PeerRemoved(key));
        }
        for (key, node) in wanted {
            match self.peers.get_mut(&key) {
                Some(peer) => peer.node = node.clone(),
                None => {
                    let peer = self.new_peer(node);
                    self.peers.insert(key, peer);
                }
            }
        }
        self.by_ip = self
            .peers
            .iter()
            .map(|(k, p)| (p.node.mesh_ip, *k))
            .collect();
    }

    fn new_peer(&mut self, node: &MapNode) -> Peer {
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x00ff_ffff;
        let tunn = Tunn::new(
            self.secret.clone(),
            node.public_key.public(),
            None,
            None,
            index,
            None,
        );
        Peer {
            node: node.clone(),
            tunn: Box::new(tunn),
            tx_bytes: 0,
            rx_bytes: 0,
            last_handshake: None,
            awaiting: None,
        }
    }

    /// A datagram the relay delivered from `from`.
    pub fn handle_datagram(&mut self, from: PeerKey, datagram: &[u8], now: Instant) {
        let Some(peer) = self.peers.get_mut(&from) else {
            self.refused.unknown_key += 1;
            tracing::debug!(peer = %from, "mesh datagram from a key outside the map dropped");
            return;
        };
        let kind = datagram.first().copied().unwrap_or(0);
        if kind == 1 && peer.awaiting.is_some() && self.public > from {
            // Both sides initiated: the greater key's initiation wins, so neither side replaces
            // its handshake with the other's and both end on the same session.
            self.refused.crossed += 1;
            return;
        }
        let own_ip = self.own.mesh_ip;
        match peer.tunn.decapsulate(None, datagram, &mut self.buf) {
            TunnResult::Done => peer.rx_bytes += datagram.len() as u64,
            TunnResult::Err(e) => {
                self.refused.rejected += 1;
                tracing::debug!(peer = %from, error = ?e, "mesh datagram rejected");
                if matches!(
                    e,
                    boringtun::noise::errors::WireGuardError::NoCurrentSession
                ) {
                    // The peer holds a session we lost (we restarted or re-added it): start over.
                    if peer.awaiting.is_none() {
                        if let TunnResult::WriteToNetwork(init) =
                            peer.tunn.format_handshake_initiation(&mut self.buf, false)
                        {
                            peer.awaiting = Some((now, 1));
                            peer.tx_bytes += init.len() as u64;
                            self.datagrams
                                .push_back((from, Bytes::copy_from_slice(init)));
                        }
                    }
                }
                return;
            }
            TunnResult::WriteToNetwork(reply) => {
                peer.rx_bytes += datagram.len() as u64;
                peer.tx_bytes += reply.len() as u64;
                self.datagrams
                    .push_back((from, Bytes::copy_from_slice(reply)));
                if kind == 1 || kind == 2 {
                    peer.awaiting = None;
                    peer.last_handshake = Some(now);
                    self.events.push_back(Event::HandshakeDone(from));
                }
            }
            TunnResult::WriteToTunnelV4(packet, src) => {
                peer.rx_bytes += datagram.len() as u64;
                if src != peer.node.mesh_ip || dst_v4(packet) != Some(own_ip) {
                    self.refused.spoofed += 1;
                    tracing::debug!(peer = %from, %src, "mesh packet with a foreign address dropped");
                } else {
                    self.packets.push_back((from, packet.to_vec()));
                }
            }
            TunnResult::WriteToTunnelV6(..) => self.refused.spoofed += 1,
        }
        self.flush_queue(from);
    }

    /// Sends what the tunnel queued while it had no session.
    fn flush_queue(&mut self, key: PeerKey) {
        let Some(peer) = self.peers.get_mut(&key) else {
            return;
        };
        for _ in 0..512 {
            match peer.tunn.decapsulate(None, &[], &mut self.buf) {
                TunnResult::WriteToNetwork(d) => {
                    peer.tx_bytes += d.len() as u64;
                    self.datagrams.push_back((key, Bytes::copy_from_slice(d)));
                }
                _ => break,
            }
        }
    }

    /// An IP packet from the local stack, routed by its destination to a peer of the map.
    pub fn send_packet(&mut self, packet: &[u8], now: Instant) {
        let Some(key) = dst_v4(packet).and_then(|ip| self.by_ip.get(&ip)).copied() else {
            self.refused.no_route += 1;
            return;
        };
        let peer = self.peers.get_mut(&key).expect("by_ip names only peers");
        let need = (packet.len() + OVERHEAD).max(MIN_BUF);
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        if let TunnResult::WriteToNetwork(d) = peer.tunn.encapsulate(packet, &mut self.buf) {
            if d.first() == Some(&1) && peer.awaiting.is_none() {
                peer.awaiting = Some((now, 1));
            }
            peer.tx_bytes += d.len() as u64;
            self.datagrams.push_back((key, Bytes::copy_from_slice(d)));
        }
    }

    /// Timers: handshake retries by `now`, boringtun's keepalive and rekey timers.
    pub fn tick(&mut self, now: Instant) {
        for (key, peer) in self.peers.iter_mut() {
            if let Some((sent, tries)) = peer.awaiting {
                if now.saturating_duration_since(sent) >= HANDSHAKE_RETRY {
                    peer.awaiting = (tries < HANDSHAKE_TRIES).then_some((now, tries + 1));
                    if let TunnResult::WriteToNetwork(d) =
                        peer.tunn.format_handshake_initiation(&mut self.buf, true)
                    {
                        peer.tx_bytes += d.len() as u64;
                        self.datagrams.push_back((*key, Bytes::copy_from_slice(d)));
                    }
                }
            }
            if let TunnResult::WriteToNetwork(d) = peer.tunn.update_timers(&mut self.buf) {
                peer.tx_bytes += d.len() as u64;
                self.datagrams.push_back((*key, Bytes::copy_from_slice(d)));
            }
        }
    }

    /// The next datagram for the relay: (destination key, WireGuard datagram).
    pub fn poll_datagram(&mut self) -> Option<(PeerKey, Bytes)> {
        self.datagrams.pop_front()
    }

    /// The next IP packet for the local stack, with the peer it came from.
    pub fn poll_packet(&mut self) -> Option<(PeerKey, Vec<u8>)> {
        self.packets.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Per-peer figures, in map order of keys.
    pub fn stats(&self) -> Vec<PeerStats> {
        let mut v: Vec<PeerStats> = self
            .peers
            .values()
            .map(|p| PeerStats {
                node: p.node.clone(),
                tx_bytes: p.tx_bytes,
                rx_bytes: p.rx_bytes,
                last_handshake: p.last_handshake,
            })
            .collect();
        v.sort_by_key(|s| s.node.mesh_ip);
        v
    }
}

/// The destination of an IPv4 packet.
pub(crate) fn dst_v4(packet: &[u8]) -> Option<Ipv4Addr> {
    (packet.len() >= 20 && packet[0] >> 4 == 4)
        .then(|| Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]))
}
