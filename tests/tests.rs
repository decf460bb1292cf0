//! Every integration test of the `citadel` package, in one test binary: linking is most of an
//! incremental build, so the suites are modules of one crate rather than one binary each. Each
//! suite is a module (`<suite>.rs`, or `<suite>/mod.rs` with its parts beside it); what several
//! suites share is in `support`, and the real servers and stand-ins come from `citadel-harness`.
//! Nothing here is global to the process: every test starts its own servers on free loopback
//! ports with its own folders, so the suites run side by side.

mod support;

mod auto;
mod bench;
mod broken_pipe;
mod conformance;
mod disk_full;
mod journal_cli;
mod mesh_node;
mod nexus;
mod node;
mod platform;
mod power_loss;
mod routing;
mod submit;
mod terminal;
mod ui;
mod websocket;
mod worker;
