//! The connection core and the smoltcp stack over a simulated network: pure, in memory, time
//! passed in. Datagrams are lost, duplicated and reordered at random while alpha's map gains and
//! loses gamma; delta is in no one's map. Checked: a TCP echo between beta and alpha delivers every
//! byte in order, no node ever sends to a key outside its map, a tunnel exists exactly for each
//! peer of the map, alpha hands its stack only packets whose source is the sending peer's mesh IP,
//! and every datagram from delta is refused.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use citadel_mesh::bench::TestNode;
use citadel_mesh::stack::Stack;
use citadel_mesh::{Core, Event, NetworkMap, PeerKey};
use proptest::prelude::*;

const ALPHA: usize = 0;
const BETA: usize = 1;
const GAMMA: usize = 2;
const DELTA: usize = 3;
const PORT: u16 = 80;
/// Simulated time after which the echo must be complete.
const SIM_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct Faults {
    loss: f64,
    dup: f64,
    jitter_ms: u64,
    seed: u64,
}

/// A small deterministic generator for the network's faults.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

struct Node {
    core: Core,
    stack: Stack,
    map: NetworkMap,
}

struct Sim {
    ids: Vec<TestNode>,
    nodes: Vec<Node>,
    /// In flight: (deliver at, from, to, datagram).
    wire: Vec<(Duration, usize, usize, Bytes)>,
    rng: Rng,
    faults: Faults,
    epoch: Instant,
    t: Duration,
    outsiders_to_alpha: u64,
}

/// An IPv4/UDP packet from `src` to `dst` (the core reads only the addresses; smoltcp checks
/// the header checksum, so it is right).
fn udp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0x45, 0, 0, 32, 0, 0, 0x40, 0, 64, 17, 0, 0];
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let sum: u32 = p
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    let sum = !(((sum & 0xffff) + (sum >> 16)) as u16);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, 1, 2, 3, 4]);
    p
}

impl Sim {
    fn new(faults: Faults) -> Sim {
        let ids: Vec<TestNode> = ["alpha", "beta", "gamma", "delta"]
            .iter()
            .enumerate()
            .map(|(i, n)| TestNode::new(n, i as u8 + 1))
            .collect();
        let maps = [
            ids[ALPHA].map(1, &[&ids[BETA], &ids[GAMMA]]),
            ids[BETA].map(1, &[&ids[ALPHA]]),
            ids[GAMMA].map(1, &[&ids[ALPHA]]),
            ids[DELTA].map(1, &[&ids[ALPHA]]),
        ];
        let epoch = Instant::now();
        let nodes = maps
            .into_iter()
            .enumerate()
            .map(|(i, map)| Node {
                core: Core::new(ids[i].secret.clone(), &map),
                stack: Stack::new(map.self_node.mesh_ip, epoch),
                map,
            })
            .collect();
        let rng = Rng(faults.seed | 1);
        Sim {
            ids,
            nodes,
            wire: Vec::new(),
            rng,
            faults,
            epoch,
            t: Duration::ZERO,
            outsiders_to_alpha: 0,
        }
    }

    fn now(&self) -> Instant {
        self.epoch + self.t
    }

    fn index_of(&self, key: &PeerKey) -> usize {
        self.ids
            .iter()
            .position(|n| n.node.public_key == *key)
            .expect("a simulated key")
    }

    /// Takes each node's datagrams onto the wire, checking the destination is in its map.
    fn collect(&mut self) {
        for i in 0..self.nodes.len() {
            while let Some((to, d)) = self.nodes[i].core.poll_datagram() {
                let map = &self.nodes[i].map;
                assert!(
                    map.peers.iter().any(|p| p.public_key == to),
                    "node {i} sent to a key outside its map"
                );
                let j = self.index_of(&to);
                if self.rng.chance(self.faults.loss) {
                    continue;
                }
                let copies = if self.rng.chance(self.faults.dup) {
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    let jitter =
                        Duration::from_millis(self.rng.next() % (self.faults.jitter_ms + 1));
                    self.wire
                        .push((self.t + Duration::from_millis(1) + jitter, i, j, d.clone()));
                }
            }
        }
    }

    /// Delivers due datagrams and checks what alpha hands its stack.
    fn deliver(&mut self) {
        let now = self.now();
        let (due, later): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= self.t);
        self.wire = later;
        for (_, from, to, d) in due {
            let key = self.ids[from].node.public_key;
            if to == ALPHA
                && !self.nodes[ALPHA]
                    .map
                    .peers
                    .iter()
                    .any(|p| p.public_key == key)
            {
                self.outsiders_to_alpha += 1;
            }
            self.nodes[to].core.handle_datagram(key, &d, now);
            while let Some((peer, packet)) = self.nodes[to].core.poll_packet() {
                let entry = self.nodes[to]
                    .map
                    .peers
                    .iter()
                    .find(|p| p.public_key == peer);
                let entry = entry.expect("a packet delivered from a key outside the map");
                assert_eq!(
                    &packet[12..16],
                    &entry.mesh_ip.octets(),
                    "a spoofed source reached the stack"
                );
                self.nodes[to].stack.push_packet(packet);
            }
        }
    }

    fn check_tunnels(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let tunnels: HashSet<PeerKey> = n.core.peer_keys().copied().collect();
            let map: HashSet<PeerKey> = n.map.peers.iter().map(|p| p.public_key).collect();
            assert_eq!(
                tunnels, map,
                "node {i} has tunnels other than its map's peers"
            );
            while let Some(e) = n.core.poll_event() {
                if i == DELTA {
                    assert!(
                        !matches!(e, Event::HandshakeDone(_)),
                        "delta completed a handshake"
                    );
                }
            }
        }
    }

    /// Each node's counters, printed when the echo does not complete.
    fn dump(&self) {
        for n in &self.nodes {
            let peers: Vec<_> = n
                .core
                .stats()
                .into_iter()
                .map(|s| (s.node.name, s.tx_bytes, s.rx_bytes))
                .collect();
            eprintln!(
                "{}: {:?} {:?}",
                n.map.self_node.name,
                n.core.refused(),
                peers
            );
        }
    }

    fn toggle_gamma(&mut self) {
        let a = &mut self.nodes[ALPHA];
        a.map.version += 1;
        if a.map.peers.iter().any(|p| p.name == "gamma") {
            a.map.peers.retain(|p| p.name != "gamma");
        } else {
            a.map.peers.push(self.ids[GAMMA].node.clone());
        }
        a.core.update_map(&a.map);
    }

    /// Traffic that must be refused or may be: gamma and delta to alpha, beta spoofing gamma.
    fn side_traffic(&mut self) {
        let now = self.now();
        let ip = |i: usize| self.ids[i].node.mesh_ip;
        let (a, b, g, d) = (ip(ALPHA), ip(BETA), ip(GAMMA), ip(DELTA));
        self.nodes[GAMMA].core.send_packet(&udp(g, a), now);
        self.nodes[DELTA].core.send_packet(&udp(d, a), now);
        self.nodes[BETA].core.send_packet(&udp(g, a), now);
        self.nodes[ALPHA].core.send_packet(&udp(a, g), now);
        self.nodes[ALPHA].core.send_packet(&udp(a, b), now);
    }
}

struct Echo {
    server: Option<smoltcp::iface::SocketHandle>,
    client: smoltcp::iface::SocketHandle,
    data: Vec<u8>,
    sent: usize,
    got: Vec<u8>,
    pending: Vec<u8>,
}

impl Echo {
    fn step(&mut self, sim: &mut Sim) {
        let c = sim.nodes[BETA].stack.tcp(self.client);
        if c.can_send() && self.sent < self.data.len() {
            self.sent += c.send_slice(&self.data[self.sent..]).expect("send");
        }
        let mut buf = [0u8; 4096];
        while c.can_recv() {
            let n = c.recv_slice(&mut buf).expect("recv");
            self.got.extend_from_slice(&buf[..n]);
            assert!(
                self.data.starts_with(&self.got),
                "the echo arrived out of order or altered"
            );
        }
        if self.server.is_none() {
            self.server = sim.nodes[ALPHA].stack.accept(PORT);
        }
        if let Some(h) = self.server {
            let s = sim.nodes[ALPHA].stack.tcp(h);
            while s.can_recv() {
                let n = s.recv_slice(&mut buf).expect("recv");
                self.pending.extend_from_slice(&buf[..n]);
            }
            if !self.pending.is_empty() && s.can_send() {
                let n = s.send_slice(&self.pending).expect("send");
                self.pending.drain(..n);
            }
        }
    }
}

fn run(faults: Faults, len: usize, toggles: Vec<u64>) {
    let mut sim = Sim::new(faults);
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    sim.nodes[ALPHA].stack.listen(PORT);
    let a_ip = sim.ids[ALPHA].node.mesh_ip;
    let client = sim.nodes[BETA].stack.connect(a_ip, PORT).expect("connect");
    let mut echo = Echo {
        server: None,
        client,
        data,
        sent: 0,
        got: Vec::new(),
        pending: Vec::new(),
    };
    let mut toggles: Vec<Duration> = toggles.into_iter().map(Duration::from_millis).collect();
    toggles.sort();
    let (mut next_tick, mut next_side) = (Duration::ZERO, Duration::ZERO);
    // Runs until the echo is complete and every map update has happened.
    while echo.got.len() < echo.data.len() || !toggles.is_empty() {
        if sim.t >= SIM_LIMIT {
            sim.dump();
        }
        assert!(
            sim.t < SIM_LIMIT,
            "echo incomplete after {:?}: {} of {} bytes",
            sim.t,
            echo.got.len(),
            echo.data.len()
        );
        let now = sim.now();
        if sim.t >= next_tick {
            sim.nodes.iter_mut().for_each(|n| n.core.tick(now));
            next_tick = sim.t + Duration::from_millis(100);
        }
        if sim.t >= next_side {
            sim.side_traffic();
            next_side = sim.t + Duration::from_millis(50);
        }
        while toggles.first().is_some_and(|t| *t <= sim.t) {
            toggles.remove(0);
            sim.toggle_gamma();
        }
        sim.deliver();
        for n in sim.nodes.iter_mut() {
            n.stack.poll(now, &mut n.core);
        }
        echo.step(&mut sim);
        for n in sim.nodes.iter_mut() {
            n.stack.poll(now, &mut n.core);
        }
        sim.collect();
        sim.check_tunnels();
        let step = next_step(&mut sim);
        sim.t += step;
    }
    let refused = sim.nodes[ALPHA].core.refused();
    assert_eq!(
        refused.unknown_key, sim.outsiders_to_alpha,
        "every datagram from a key outside the map is refused, and only those"
    );
}

/// Jumps to the next thing due: a delivery, a stack timer, the next tick (at most 20 ms).
fn next_step(sim: &mut Sim) -> Duration {
    let now = sim.now();
    let mut step = Duration::from_millis(20);
    for n in sim.nodes.iter_mut() {
        if let Some(d) = n.stack.poll_delay(now) {
            step = step.min(d);
        }
    }
    for w in &sim.wire {
        step = step.min(w.0.saturating_sub(sim.t));
    }
    step.max(Duration::from_millis(1))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn tcp_over_the_core_survives_a_faulty_network(
        loss in 0.0f64..0.15,
        dup in 0.0f64..0.1,
        jitter_ms in 0u64..30,
        seed in any::<u64>(),
        len in 1usize..40_000,
        toggles in proptest::collection::vec(0u64..5_000, 0..6),
    ) {
        run(Faults { loss, dup, jitter_ms, seed }, len, toggles);
    }
}

#[test]
fn a_clean_network_carries_a_large_echo() {
    run(
        Faults {
            loss: 0.0,
            dup: 0.0,
            jitter_ms: 0,
            seed: 1,
        },
        300_000,
        vec![],
    );
}
