//! Node management against real servers: `citadel init` through the device authorization of a
//! real `citadel nexus serve` process (approve, deny, expiry, `slow_down`, init twice), the
//! manifest and `config show`, and the compose services on the real Docker engine with a stand-in
//! engine image built here (`citadel up/down/services ls/logs`, `APPLY_DEVICE_CONFIG` through a
//! real worker).

mod cli;
mod compose;
mod init;
