//! The userspace TCP/IP stack on the node's mesh IP: a smoltcp `Interface` (`Medium::Ip`) over a
//! virtual device whose wire is the connection core. Synchronous, with time passed in; it owns the
//! sockets, the listeners' backlogs and the ping socket, and it never reads a clock or does I/O.

use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;
use std::time::Instant;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::core::Core;

/// The largest IP packet on the mesh: WireGuard's usual MTU, so a later direct UDP path fits.
pub const MTU: usize = 1420;
/// Each TCP socket's receive and send buffer. With 256 KiB (window scaling on) an echo whose
/// both sides filled their buffers stalled for good in smoltcp 0.14; 64 KiB needs no scaling.
const TCP_BUFFER: usize = 64 * 1024;
/// Listening sockets kept open per port, so several peers can connect at once.
const BACKLOG: usize = 8;
/// The ICMP identifier of this node's pings.
pub(crate) const PING_IDENT: u16 = 0x6369;

/// The device between smoltcp and the core: two packet queues.
#[derive(Debug, Default)]
pub struct VirtualDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}

#[derive(Debug)]
pub struct Rx(Vec<u8>);
#[derive(Debug)]
pub struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0; len];
        let r = f(&mut packet);
        self.0.push_back(packet);
        r
    }
}

impl Device for VirtualDevice {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((Rx(packet), Tx(&mut self.tx)))
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps
    }
}

/// A listening port: sockets waiting for a peer, and connections ready to accept.
#[derive(Debug, Default)]
pub(crate) struct Listener {
    pub waiting: Vec<SocketHandle>,
    pub ready: VecDeque<SocketHandle>,
    pub waker: Option<std::task::Waker>,
}

/// The stack: interface, device, sockets.
pub struct Stack {
    iface: Interface,
    device: VirtualDevice,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) listeners: HashMap<u16, Listener>,
    pub(crate) ping: SocketHandle,
    epoch: Instant,
    next_port: u16,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// A stack on `ip`; `epoch` is the moment its clock counts from.
    pub fn new(ip: Ipv4Addr, epoch: Instant) -> Self {
        let mut device = VirtualDevice::default();
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = u64::from(u32::from(ip)) ^ epoch.elapsed().as_nanos() as u64;
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(ip), 10))
                .expect("one address");
        });
        let mut sockets = SocketSet::new(vec![]);
        let buffer =
            || icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 16], vec![0; 4096]);
        let mut ping = icmp::Socket::new(buffer(), buffer());
        ping.bind(icmp::Endpoint::Ident(PING_IDENT))
            .expect("fresh socket");
        let ping = sockets.add(ping);
        Stack {
            iface,
            device,
            sockets,
            listeners: HashMap::new(),
            ping,
            epoch,
            next_port: 49_152,
        }
    }

    fn at(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    /// Moves packets between the core and the sockets until neither side has more.
    pub fn poll(&mut self, now: Instant, core: &mut Core) {
        let at = self.at(now);
        loop {
            while let Some((_, packet)) = core.poll_packet() {
                self.push_packet(packet);
            }
            self.iface.poll(at, &mut self.device, &mut self.sockets);
            if self.device.tx.is_empty() {
                break;
            }
            while let Some(packet) = self.device.tx.pop_front() {
                core.send_packet(&packet, now);
            }
        }
        self.refill_listeners();
    }

    /// An IP packet for the stack, as the core delivered it.
    pub fn push_packet(&mut self, packet: Vec<u8>) {
        self.device.rx.push_back(packet);
    }

    /// How long until the stack needs polling again (None: only on new input).
    pub fn poll_delay(&mut self, now: Instant) -> Option<std::time::Duration> {
        let at = self.at(now);
        self.iface.poll_delay(at, &self.sockets).map(|d| d.into())
    }

    /// The node's address changed in the map.
    pub fn set_ip(&mut self, ip: Ipv4Addr) {
        self.iface.update_ip_addrs(|a| {
            a.clear();
            a.push(IpCidr::new(IpAddress::Ipv4(ip), 10))
                .expect("one address");
        });
    }

    fn new_tcp() -> tcp::Socket<'static> {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
            tcp::SocketBuffer::new(vec![0u8; TCP_BUFFER]),
        );
        s.set_nagle_enabled(false);
        s
    }

    /// Opens `port` for peers to connect to.
    pub fn listen(&mut self, port: u16) {
        self.listeners.entry(port).or_default();
        self.refill_listeners();
    }

    /// Closes a listening port and its connections not yet accepted.
    pub fn unlisten(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for h in l.waiting.into_iter().chain(l.ready) {
                self.sockets.get_mut::<tcp::Socket>(h).abort();
                self.sockets.remove(h);
            }
        }
    }

    /// Moves connected sockets to the ready queue and keeps `BACKLOG` listening.
    fn refill_listeners(&mut self) {
        for (port, l) in self.listeners.iter_mut() {
            let sockets = &mut self.sockets;
            let mut woke = false;
            let mut keep = Vec::with_capacity(BACKLOG);
            for h in l.waiting.drain(..) {
                match sockets.get::<tcp::Socket>(h).state() {
                    tcp::State::Listen | tcp::State::SynReceived => keep.push(h),
                    tcp::State::Closed => {
                        sockets.remove(h);
                    }
                    _ => {
                        l.ready.push_back(h);
                        woke = true;
                    }
                }
            }
            l.waiting = keep;
            while l.waiting.len() < BACKLOG {
                let mut s = Self::new_tcp();
                s.listen(*port).expect("port is not zero");
                l.waiting.push(sockets.add(s));
            }
            if woke {
                if let Some(w) = l.waker.take() {
                    w.wake();
                }
            }
        }
    }

    /// Starts a connection to `ip:port` from a fresh local port.
    pub fn connect(&mut self, ip: Ipv4Addr, port: u16) -> Result<SocketHandle, tcp::ConnectError> {
        let mut s = Self::new_tcp();
        self.next_port = if self.next_port >= 65_000 {
            49_152
        } else {
            self.next_port + 1
        };
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(ip), port),
            self.next_port,
        )?;
        Ok(self.sockets.add(s))
    }

    /// The TCP socket behind a handle.
    pub fn tcp(&mut self, h: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(h)
    }

    /// The ping socket.
    pub(crate) fn icmp(&mut self) -> &mut icmp::Socket<'static> {
        self.sockets.get_mut::<icmp::Socket>(self.ping)
    }

    /// Takes a connection a peer opened on `port`, if one is ready.
    pub fn accept(&mut self, port: u16) -> Option<SocketHandle> {
        self.listeners.get_mut(&port)?.ready.pop_front()
    }

    /// Resets every connection with `ip`: its peer left the map, so nothing will arrive.
    pub fn abort_connections(&mut self, ip: Ipv4Addr) {
        for (_, socket) in self.sockets.iter_mut() {
            if let smoltcp::socket::Socket::Tcp(s) = socket {
                if s.remote_endpoint()
                    .is_some_and(|e| e.addr == IpAddress::Ipv4(ip))
                {
                    s.abort();
                }
            }
        }
    }

    /// Removes a socket.
    pub fn remove(&mut self, h: SocketHandle) {
        self.sockets.remove(h);
    }
}
