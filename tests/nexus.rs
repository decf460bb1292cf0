//! The control plane (`citadel nexus serve`) as a real child process on a free loopback port, and
//! the nexus transport and the CLI against it: the wire format of docs/wire-format.md#nexus-http byte for byte, auth,
//! malformed requests, leases, long-poll, events, restart without loss, and the zero-config flow.

#[path = "../transports/tests/redis/harness.rs"]
#[allow(dead_code)]
mod harness;
#[path = "nexus/support.rs"]
mod support;

#[path = "nexus/api.rs"]
mod api;
#[path = "nexus/flow.rs"]
mod flow;
#[path = "nexus/transport.rs"]
mod transport;
