//! `citadel-chaos`: the chaos suite's machinery (docs/chaos.md). It runs real brokers (Redis, NATS
//! JetStream) and real release `citadel` workers (built with `--features chaos`) in containers
//! with testcontainers, breaks them, drives load through a producer that records everything, and
//! checks the obligations over the whole history. The scenarios themselves are the tests in
//! `chaos/tests/`.
//!
//! - [`gate`]: whether the suite runs here (Docker and the images ready) or says why it skips.
//! - [`topology`]: one scenario's containers, network and faults; always cleaned up.
//! - [`producer`]: submits jobs with unique ids to Redis or NATS, idempotently, across broker
//!   restarts.
//! - [`history`]: reads back every event, dead letter and unsettled job of the jobs sent, from
//!   either broker, as one history.
//! - [`journals`]: every worker's journal at the end (`citadel journal export`), merged: what
//!   ran on which node, for the duplicates across nodes and the jobs left running.
//! - [`effects`]: side effects counted outside the workers (lines shell jobs append to a file on
//!   a host folder mounted into them).
//! - [`checker`]: the obligations and the figures.
//!
//! This crate is a test harness, never shipped: it uses `anyhow` for its errors, and it must
//! never reach a container except through ports published on 127.0.0.1 or the Docker API.

pub mod checker;
pub mod effects;
pub mod gate;
pub mod history;
pub mod journals;
pub mod producer;
pub mod topology;

pub use checker::{check, Figures};
pub use effects::Effects;
pub use gate::gate;
pub use history::History;
pub use journals::Journals;
pub use producer::{Connection, Expect, JobSpec, Producer};
pub use topology::{Broker, Topology, WorkerSpec};

/// The images `chaos/images/build.sh` builds.
pub const REDIS_IMAGE: (&str, &str) = ("citadel-chaos/redis", "latest");
pub const NATS_IMAGE: (&str, &str) = ("citadel-chaos/nats", "latest");
pub const CITADEL_IMAGE: (&str, &str) = ("citadel-chaos/citadel", "latest");
