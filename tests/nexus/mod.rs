//! The control plane (`citadel nexus serve`) as a real child process on a free loopback port, and
//! the nexus transport and the CLI against it: the wire format of docs/wire-format.md#nexus-http byte for byte, auth,
//! malformed requests, leases, long-poll, events, restart without loss, the zero-config flow, and
//! per-node credentials and organizations.

mod api;
mod carried;
mod credentials;
mod fenced;
mod flow;
mod mesh;
mod retention;
mod terminal_client;
mod terminal_tokens;
mod transport;
