//! The WebSocket job push against the real control plane (`citadel nexus serve` as a child
//! process on a free loopback port): the `WebSocketSource` (push, settlements, leases,
//! cancellation, close, dead-peer detection, reconnects), the frames on the wire (bad frames get
//! error frames), and the real Runner and `citadel work --transport websocket` on top.

#[path = "nexus/support.rs"]
#[allow(dead_code)]
mod support;

#[path = "websocket/frames.rs"]
mod frames;
#[path = "websocket/runner.rs"]
mod runner;
#[path = "websocket/source.rs"]
mod source;
