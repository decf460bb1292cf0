//! `citadel-transports` owns the job model that every part of citadel speaks: what a job is
//! ([`Job`], [`JobId`]), the vocabulary a worker uses to settle a delivery ([`Settlement`]) and,
//! as the transports land, the `JobSource` trait and its implementations.
//!
//! This crate must never know about the journal or the runtime: it describes jobs and moves them,
//! it does not decide what happens to them.

mod job;
mod settlement;

pub use job::{Job, JobId, JobIdError};
pub use settlement::Settlement;
