//! The transport conformance suite (docs/transports.md): one set of tests, written once in
//! `conformance/suite.rs`, run against every transport with its real server — redis-server, nats-server and
//! `citadel nexus serve` — through a small [`fixture::Fixture`] per transport that plays the
//! producer (enqueue, cancel, read the dead-letter queue and the job's events in the transport's
//! own wire format). A promise a transport cannot keep is a capability it declares
//! (`Capabilities`), and the suite checks the declaration as well as the behaviour.

mod auto;
mod fixture;
mod nats;
mod nexus;
mod redis_fixture;
mod suite;
mod websocket;

/// Instantiates every test of the suite for one fixture.
macro_rules! conformance {
    ($name:ident, $fixture:ty) => {
        mod $name {
            use crate::conformance::suite;
            type F = $fixture;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn declares_its_capabilities() {
                suite::declares_its_capabilities::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn delivers_and_acks() {
                suite::delivers_and_acks::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn next_is_cancel_safe() {
                suite::next_is_cancel_safe::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn retries_after_the_delay_counting_an_attempt() {
                suite::retries_after_the_delay_counting_an_attempt::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dead_letters_with_reason_and_attempts() {
                suite::dead_letters_with_reason_and_attempts::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn extending_the_lease_keeps_a_long_job() {
                suite::extending_the_lease_keeps_a_long_job::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_silent_workers_lease_runs_out() {
                suite::a_silent_workers_lease_runs_out::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn release_gives_work_back() {
                suite::release_gives_work_back::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn cancellation_before_start_and_mid_run() {
                suite::cancellation_before_start_and_mid_run::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn events_reach_the_producer_in_order() {
                suite::events_reach_the_producer_in_order::<F>().await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_payloads_are_dead_lettered_or_refused() {
                suite::bad_payloads_are_dead_lettered_or_refused::<F>().await
            }
        }
    };
}

conformance!(redis, crate::conformance::redis_fixture::RedisFixture);
conformance!(nats_jetstream, crate::conformance::nats::NatsFixture);
conformance!(nexus_http, crate::conformance::nexus::NexusFixture);
conformance!(
    websocket_push,
    crate::conformance::websocket::WebSocketFixture
);
conformance!(
    auto_over_redis_and_nexus,
    crate::conformance::auto::AutoFixture
);
