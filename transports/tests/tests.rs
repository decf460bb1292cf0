//! The integration tests of `citadel-transports`, in one test binary (linking is most of an
//! incremental build): each transport's suite is a module, run against its real server started
//! per test by `citadel-harness` on a free loopback port. No mocks.

mod nats;
mod redis;

/// What the Redis and NATS suites share: the cost of recording a success before the journal.
mod record_cost {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use citadel_transports::{EventData, EventMeta, JobId, JobSource, WireEvent};
    use serde_json::json;

    pub const JOBS: usize = 400;
    pub const AT_ONCE: usize = 8;

    /// Runs `JOBS` jobs' events through `src` as the runner does (`claimed`, `start`, a chunk,
    /// then the success recorded and its `end` published), `AT_ONCE` at a time, and hands each
    /// job with how long its record took to `check` (which asserts the record is there).
    pub async fn record_successes<S, F, Fut>(src: Arc<S>, mut check: F) -> Vec<Duration>
    where
        S: JobSource + 'static,
        F: FnMut(JobId) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let meta = EventMeta::new("node-a", "node-a");
        let mut spans = Vec::with_capacity(JOBS);
        for round in 0..JOBS / AT_ONCE {
            let mut tasks = Vec::new();
            for i in 0..AT_ONCE {
                let (src, meta) = (src.clone(), meta.clone());
                let id = JobId::new(format!("w-{round}-{i}")).unwrap();
                tasks.push(tokio::spawn(async move {
                    let before = [
                        EventData::Claimed {
                            agent_version: "0.1.0".into(),
                        },
                        EventData::Start {
                            message: "go".into(),
                        },
                        EventData::Chunk {
                            content: "tok".into(),
                            index: 0,
                        },
                    ];
                    for data in before {
                        let ev = WireEvent::new(id.clone(), meta.clone(), data);
                        src.publish(&ev).await.unwrap();
                    }
                    let end = EventData::End {
                        result: json!({"output": "x".repeat(256)}),
                    };
                    let ev = WireEvent::new(id.clone(), meta, end);
                    let asked = Instant::now();
                    src.record_success(&ev).await.unwrap();
                    let span = asked.elapsed();
                    src.publish(&ev).await.unwrap();
                    (id, span)
                }));
            }
            for t in tasks {
                let (id, span) = t.await.unwrap();
                check(id).await;
                spans.push(span);
            }
        }
        spans
    }

    /// Prints the spans' p50, p99 and max under `label` (read, never asserted).
    pub fn report(label: &str, mut spans: Vec<Duration>) {
        spans.sort();
        let at = |q: f64| spans[((spans.len() - 1) as f64 * q) as usize];
        println!(
            "{label} completion record ahead of the journal, over {JOBS} jobs ({AT_ONCE} at once): p50 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            spans[spans.len() - 1]
        );
    }
}
