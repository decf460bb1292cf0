//! The WebSocket job push against the real control plane (`citadel nexus serve` as a child
//! process on a free loopback port): the `WebSocketSource` (push, settlements, leases,
//! cancellation, close, dead-peer detection, reconnects), the frames on the wire (bad frames get
//! error frames), and the real Runner and `citadel work --transport websocket` on top.

mod frames;
mod runner;
mod source;
