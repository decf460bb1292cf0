//! The chaos scenarios (docs/chaos.md), one test each, run by `./scripts/test` against containers
//! (`--test-threads=1`: they share the 2-core machine and must not overlap). Each prints its
//! figures and asserts the obligations; without `CITADEL_CHAOS=1` each prints `skipped: …`.

mod scenarios {
    pub mod brokers;
    pub mod drain;
    pub mod fleet;
    pub mod kills;
    pub mod poison;
    pub mod support;
}
