//! Platform, status and the node handlers against real servers: the status server of a real
//! `citadel work` (with a strict Prometheus text parser), the Redis heartbeat of docs/wire-format.md#heartbeat on a
//! real redis-server, the nexus heartbeat on the embedded control plane, `model_download`
//! against a local HTTP server with Range support, and `extraction` against a stand-in GLiNER
//! service speaking its HTTP protocol.

mod download;
mod extraction;
mod prom;
mod servers;
mod status;
