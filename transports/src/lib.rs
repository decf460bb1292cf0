//! `citadel-transports` owns the job model that every part of citadel speaks: what a job is
//! ([`Job`], [`JobId`]), what a source delivers ([`Delivery`], [`Incoming`], [`Receipt`]), the
//! vocabulary a worker uses to settle a delivery ([`Settlement`]), the one backoff policy
//! ([`Backoff`]), the job events of the wire
//! format ([`WireEvent`]), the [`JobSource`] trait and its implementations ([`redis`], [`nats`],
//! [`websocket`], [`nexus`], listed once in the [`registry`]), the parts they share (the
//! job-entry [`parse`]r, the fetcher's inbox, the control-plane client) and the [`auto`] selector
//! over them.
//!
//! This crate must never know about the journal or the runtime: it describes jobs and moves them,
//! it does not decide what happens to them.

pub mod auto;
mod backoff;
pub mod control_plane;
pub mod dead_letters;
mod delivery;
pub mod events;
pub mod http;
mod inbox;
mod job;
pub mod nats;
pub mod nexus;
pub mod parse;
mod produce;
pub mod redis;
pub mod registry;
pub mod routing;
mod settlement;
mod source;
pub mod websocket;

pub use self::auto::{AutoConfig, AutoSource, TransportCandidate};
pub use self::nats::{NatsConfig, NatsSource};
pub use self::nexus::{NexusConfig, NexusSource};
pub use self::redis::{RedisConfig, RedisSource};
pub use self::registry::{Description, TransportConfig, TransportName, TransportProducer};
pub use self::websocket::{WebSocketConfig, WebSocketSource};
pub use backoff::{Backoff, Retrier};
pub use delivery::{Delivery, Incoming, Malformed, Receipt};
pub use events::{EventData, EventMeta, JobStatus, WireEvent};
pub use job::{Job, JobId, JobIdError};
pub use produce::JobEntry;
pub use settlement::Settlement;
pub use source::{Capabilities, Health, JobSource, Lease, Route, SettleContext, SourceError};
