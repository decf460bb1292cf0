//! What the two transports that talk to a citadel control plane (nexus over HTTP, websocket over
//! one WebSocket) share: the HTTP client with its error mapping ([`client`]), the decoding of
//! the plane's job records ([`record`]), each attempt's reported outcome and recorded success ([`outcome`]) and the wire
//! types both ends use ([`wire`], public: the control plane serves them). It must never claim, settle or run a job itself; the
//! transports do that with these parts.

pub(crate) mod client;
pub mod mesh_wire;
mod outcome;
mod record;
pub mod wire;

pub(crate) use client::{Client, Failure};
pub(crate) use outcome::{Outcomes, Recorded};
pub(crate) use record::from_record;
