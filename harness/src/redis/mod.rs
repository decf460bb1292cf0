//! Redis for the tests: a throwaway `redis-server` ([`LocalRedis`], in `local`) wrapped as a
//! test [`Server`] (panics instead of errors, sources with short test timings), and the producer's
//! side of the wire format (docs/wire-format.md#job-entries): `XADD` a job, and read back the
//! group's pending entries and the streams the worker writes. It only talks to a server a test
//! started.

mod local;

use std::time::Duration;

use citadel_transports::redis::RedisProducer;
use citadel_transports::{Incoming, JobEntry, JobSource, RedisConfig, RedisSource};
use redis::aio::MultiplexedConnection;
use redis::Value;

pub use local::LocalRedis;

pub const STREAM: &str = "jobs:v1:gpu-general";
pub const GROUP: &str = "workers";

/// A throwaway redis-server ([`LocalRedis`]) with test conveniences.
#[derive(Debug)]
pub struct Server {
    redis: LocalRedis,
}

impl Server {
    pub async fn start() -> Self {
        let redis = LocalRedis::start()
            .await
            .expect("redis-server must be installed (apt-get install -y redis-server)");
        Self { redis }
    }

    /// Kills the server (its data is lost: no persistence).
    pub fn stop(&mut self) {
        self.redis.stop();
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) {
        self.redis.restart().await.expect("restart redis-server");
    }

    pub fn url(&self) -> String {
        self.redis.url()
    }

    async fn try_conn(&self) -> redis::RedisResult<MultiplexedConnection> {
        redis::Client::open(self.url())?
            .get_multiplexed_async_connection()
            .await
    }

    pub async fn conn(&self) -> MultiplexedConnection {
        self.try_conn().await.expect("connect to the test redis")
    }

    /// Settings for tests: short block, lease and reclaim interval.
    pub fn config(&self, consumer: &str) -> RedisConfig {
        let mut c = RedisConfig::new(self.url(), consumer);
        c.block = Duration::from_millis(200);
        c.lease = Duration::from_secs(2);
        c.reclaim_interval = Duration::from_millis(50);
        c
    }

    pub async fn source(&self, consumer: &str) -> RedisSource {
        RedisSource::connect(self.config(consumer))
            .await
            .expect("connect the source")
    }
}

/// A raw `XADD` of these fields: for entries a producer would never write (malformed ones, or
/// fields of another producer). Well-formed jobs go through [`enqueue_job`].
pub async fn enqueue(c: &mut MultiplexedConnection, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(STREAM).arg("*");
    for (k, v) in fields {
        cmd.arg(*k).arg(*v);
    }
    cmd.query_async(c).await.unwrap()
}

/// A job `{"n":1}` enqueued by the product's own producer ([`RedisProducer`]), as
/// docs/wire-format.md#job-entries has it.
pub async fn enqueue_job(c: &mut MultiplexedConnection, id: &str, ty: &str) -> String {
    let payload = serde_json::json!({"n": 1});
    RedisProducer::new(c.clone())
        .enqueue(STREAM, &JobEntry::new(id, ty, &payload))
        .await
        .expect("enqueue a job")
}

/// `XGROUP DESTROY` of the test stream's group: what a Redis that lost the group leaves.
pub async fn destroy_group(c: &mut MultiplexedConnection) {
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(STREAM)
        .arg(GROUP)
        .query_async(c)
        .await
        .expect("XGROUP DESTROY");
}

/// Calls `next(max)` until something comes or `within` passes.
pub async fn next_within(src: &RedisSource, max: usize, within: Duration) -> Vec<Incoming> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let got = src.next(max).await.expect("next");
        if !got.is_empty() || tokio::time::Instant::now() >= deadline {
            return got;
        }
    }
}

/// The group's pending entries: (id, consumer, deliveries).
pub async fn pending(c: &mut MultiplexedConnection) -> Vec<(String, String, u32)> {
    pending_in(c, STREAM).await
}

/// The group's pending entries on `stream`: (id, consumer, deliveries).
pub async fn pending_in(c: &mut MultiplexedConnection, stream: &str) -> Vec<(String, String, u32)> {
    let v: Vec<(String, String, u64, u32)> = redis::cmd("XPENDING")
        .arg(stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(c)
        .await
        .unwrap();
    v.into_iter().map(|(id, who, _, n)| (id, who, n)).collect()
}

/// The entries of a stream as (id, fields).
pub async fn range(
    c: &mut MultiplexedConnection,
    key: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    let v: Value = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query_async(c)
        .await
        .unwrap();
    let Value::Array(entries) = v else {
        panic!("XRANGE: {v:?}")
    };
    entries
        .into_iter()
        .map(|e| {
            let (id, fields): (String, Vec<(String, String)>) =
                redis::FromRedisValue::from_redis_value(e).unwrap();
            (id, fields)
        })
        .collect()
}

pub fn field<'a>(fields: &'a [(String, String)], k: &str) -> Option<&'a str> {
    fields.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
}

pub fn job(i: &Incoming) -> &citadel_transports::Job {
    match i {
        Incoming::Job(d) => &d.job,
        Incoming::Malformed(m) => panic!("expected a job, got {m:?}"),
    }
}
