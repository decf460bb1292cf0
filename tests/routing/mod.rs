//! Capability routing (docs/transports.md#routing): which streams a worker consumes, derived from
//! its capabilities and settings, with priorities, live as engines come and go (`redis`), and
//! the producers' side (`submit`).

mod nats;
mod plane;
mod redis;
mod submit;
mod support;
