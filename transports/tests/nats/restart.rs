//! Restarts of nats-server (SIGKILL) around an ack: what a server that wrote only part of its
//! state leaves on the consumer, and how the workers converge from it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::PullConsumer;
use citadel_transports::nats::{NatsProducer, DEFAULT_CONSUMER, DEFAULT_STREAM};
use citadel_transports::{Incoming, JobSource, Settlement};

use citadel_harness::nats::*;

const WAIT: Duration = Duration::from_secs(20);

/// The workers' consumer's folder in the server's store (its delivered and ack state).
fn consumer_dir(server: &Server) -> PathBuf {
    server
        .store()
        .join("jetstream/$G/streams")
        .join(DEFAULT_STREAM)
        .join("obs")
        .join(DEFAULT_CONSUMER)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The consumer's pending plus ack-pending messages, and the messages the stream holds.
async fn counts(p: &NatsProducer) -> (u64, u64) {
    let s = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    let mut c: PullConsumer = s.get_consumer(DEFAULT_CONSUMER).await.unwrap();
    let info = c.info().await.unwrap().clone();
    let held = s.cached_info().state.messages;
    (info.num_pending + info.num_ack_pending as u64, held)
}

/// Collects `n` deliveries from `src`.
async fn take(src: &impl JobSource, n: usize) -> Vec<Incoming> {
    let mut got = Vec::new();
    let begun = Instant::now();
    while got.len() < n {
        got.extend(next_within(src, n - got.len(), Duration::from_secs(1)).await);
        assert!(
            begun.elapsed() < WAIT,
            "only {} of {n} deliveries",
            got.len()
        );
    }
    got
}

/// The stream's message store (its blocks and indexes).
fn messages_dir(server: &Server) -> PathBuf {
    server
        .store()
        .join("jetstream/$G/streams")
        .join(DEFAULT_STREAM)
        .join("msgs")
}

/// Lets `b`'s fetcher run until the consumer's (unsettled, held) counts satisfy `done`, and
/// returns them; fails after `within`. Only `running` is delivered meanwhile: it comes back after
/// each lease and is never settled, a long job elsewhere.
async fn until_counts(
    b: &impl JobSource,
    p: &NatsProducer,
    within: Duration,
    done: impl Fn(u64, u64) -> bool,
) -> (u64, u64) {
    let begun = Instant::now();
    loop {
        for i in next_within(b, 1, Duration::from_millis(300)).await {
            assert_eq!(
                job(&i).id.as_str(),
                "running",
                "only `running` is delivered again"
            );
        }
        let (unsettled, held) = counts(p).await;
        if done(unsettled, held) {
            return (unsettled, held);
        }
        assert!(
            begun.elapsed() < within,
            "still {unsettled} unsettled on the consumer while the stream holds {held}"
        );
    }
}

/// Settles `receipt` with an ack, trying again while the restarted server is not back.
async fn ack_until_done(src: &impl JobSource, incoming: &Incoming) {
    let begun = Instant::now();
    while let Err(e) = src
        .settle(incoming.receipt(), &Settlement::Ack, &ctx())
        .await
    {
        assert!(begun.elapsed() < WAIT, "the ack never went through: {e}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A server killed after it removed an acked message from the stream but before it wrote the
/// consumer's state comes back with the message ack-pending on the consumer and gone from the
/// stream: a delivery it can never make again. While an older message stays in the stream (a
/// job still running), the server never drops that entry by itself. The server's two writes
/// are made apart here: it is stopped cleanly (everything written) and the consumer's state is
/// put back as it was before the ack. The workers clear the entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_pending_entry_whose_message_is_gone_is_cleared() {
    let mut server = Server::start();
    let p = server.producer().await;
    let a = server.source("node-a").await;
    let mut seqs = Vec::new();
    for id in ["running", "acked", "after"] {
        seqs.push(enqueue_job(&p, id, "noop").await);
    }
    let got = take(&a, 3).await;
    let by_id = |id: &str| got.iter().find(|i| job(i).id.as_str() == id).unwrap();
    a.settle(by_id("after").receipt(), &Settlement::Ack, &ctx())
        .await
        .unwrap();
    server.terminate();
    let snapshot = server.store().join("consumer-before-the-ack");
    copy_dir(&consumer_dir(&server), &snapshot);
    server.restart();
    ack_until_done(&a, by_id("acked")).await;
    drop(a);
    server.terminate();
    copy_dir(&snapshot, &consumer_dir(&server));
    server.restart();
    let p = server.producer().await;
    let stream = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    assert!(
        stream.get_raw_message(seqs[1]).await.is_err(),
        "the acked message is gone from the stream"
    );
    assert_eq!(
        counts(&p).await,
        (2, 1),
        "the consumer waits for acks of `running` and of `acked`, gone"
    );
    let b = server.source("node-b").await;
    until_counts(&b, &p, WAIT, |unsettled, held| unsettled == held).await;
    assert!(
        stream.get_raw_message(seqs[0]).await.is_ok(),
        "`running` is still there"
    );
}

/// A server killed between its writes can also leave the other half: a message the consumer
/// counts as acked still in the stream. With such a message above a lost one, the consumer
/// waits for as many acks as the stream holds messages after its ack floor, and the counts
/// show nothing wrong; the lost message's entry must be cleared all the same. Made here as in
/// the test above, with `running` below the lost one (a job still running elsewhere, so the
/// server never drops the entry by itself): the stream's messages and the consumer's state are
/// put back, each from a moment of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_ack_under_a_message_acked_but_kept_is_cleared() {
    let mut server = Server::start();
    let p = server.producer().await;
    let a = server.source("node-a").await;
    let mut seqs = Vec::new();
    for id in ["running", "lost", "kept"] {
        seqs.push(enqueue_job(&p, id, "noop").await);
    }
    let got = take(&a, 3).await;
    let by_id = |id: &str| got.iter().find(|i| job(i).id.as_str() == id).unwrap();
    server.terminate();
    let all_held = server.store().join("messages-all-held");
    copy_dir(&messages_dir(&server), &all_held);
    server.restart();
    ack_until_done(&a, by_id("kept")).await;
    server.terminate();
    let kept_acked = server.store().join("consumer-kept-acked");
    copy_dir(&consumer_dir(&server), &kept_acked);
    std::fs::remove_dir_all(messages_dir(&server)).unwrap();
    copy_dir(&all_held, &messages_dir(&server));
    server.restart();
    ack_until_done(&a, by_id("lost")).await;
    drop(a);
    server.terminate();
    copy_dir(&kept_acked, &consumer_dir(&server));
    server.restart();
    let p = server.producer().await;
    let stream = p.jetstream().get_stream(DEFAULT_STREAM).await.unwrap();
    assert!(
        stream.get_raw_message(seqs[1]).await.is_err(),
        "`lost` is gone from the stream"
    );
    assert!(
        stream.get_raw_message(seqs[2]).await.is_ok(),
        "`kept` is still in the stream"
    );
    assert_eq!(
        counts(&p).await,
        (2, 2),
        "the consumer waits for the acks of `running` and `lost`; the stream holds `running` and `kept`"
    );
    let b = server.source("node-b").await;
    let (_, held) = until_counts(&b, &p, 2 * WAIT, |unsettled, _| unsettled == 1).await;
    assert_eq!(held, 2, "`running` and `kept` stay in the stream");
    assert!(
        stream.get_raw_message(seqs[0]).await.is_ok(),
        "`running` is still there"
    );
}
