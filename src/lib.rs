//! `citadel`: the node agent. This library holds the command line and the runtime so the
//! integration tests can drive them; the binary in `main.rs` only calls [`cli::run`].

pub mod bench;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod format;
pub mod handlers;
pub mod manifest;
pub mod mesh;
pub mod node;
pub mod paths;
pub mod platform;
pub mod runner;
pub mod serve;
pub mod services;
pub mod status;
pub mod terminal;
