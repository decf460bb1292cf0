//! The producer's side of the Redis transport, for `citadel submit`, `citadel bench redis`/`llm`,
//! the chaos suite and the tests: the one place that writes a job entry of the wire format
//! ([`JobEntry`]: `jobId`, `type`, `payload` as a JSON string, and `enqueuedAt` when given) with
//! `XADD`, one at a time, pipelined, or once only (behind a marker
//! key, so a retry after an unanswered try never enqueues the job twice). It must never consume
//! jobs.

use std::time::Duration;

use super::conn::map_err;
use crate::produce::JobEntry;
use crate::source::SourceError;
use redis::aio::MultiplexedConnection;

/// `XADD stream * field value …` for `entry`.
fn xadd(entry: &JobEntry<'_>, stream: &str) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    for (name, value) in entry.fields() {
        cmd.arg(name).arg(value);
    }
    cmd
}

/// Adds the entry (ARGV) to the stream KEYS[2] only when the marker KEYS[1] was not set, and
/// sets it (for ARGV[1] seconds): the entry id, or false when the marker was already there.
const ONCE: &str = r"
if redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return redis.call('XADD', KEYS[2], '*', unpack(ARGV, 2))
end
return false
";

/// Enqueues jobs on Redis job streams.
#[derive(Clone)]
pub struct RedisProducer {
    conn: MultiplexedConnection,
}

impl std::fmt::Debug for RedisProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisProducer").finish_non_exhaustive()
    }
}

impl RedisProducer {
    /// Connects to the Redis at `url`.
    pub async fn connect(url: &str) -> Result<Self, SourceError> {
        let client = redis::Client::open(url).map_err(map_err)?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .map_err(map_err)?;
        Ok(Self::new(conn))
    }

    /// A producer on a connection the caller already holds.
    pub fn new(conn: MultiplexedConnection) -> Self {
        Self { conn }
    }

    /// Its connection, for reading what the workers write back (a job's event stream).
    pub fn connection(&self) -> MultiplexedConnection {
        self.conn.clone()
    }

    /// Adds `entry` to `stream`; returns the entry's id.
    pub async fn enqueue(&self, stream: &str, entry: &JobEntry<'_>) -> Result<String, SourceError> {
        xadd(entry, stream)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(map_err)
    }

    /// Adds every entry to `stream` in one pipeline (one round trip).
    pub async fn enqueue_all(
        &self,
        stream: &str,
        entries: &[JobEntry<'_>],
    ) -> Result<(), SourceError> {
        let mut pipe = redis::pipe();
        for entry in entries {
            pipe.add_command(xadd(entry, stream)).ignore();
        }
        pipe.query_async(&mut self.conn.clone())
            .await
            .map_err(map_err)
    }

    /// Adds `entry` to `stream` unless `marker` is set, and sets `marker` for `ttl`, in one
    /// step: a retry whose earlier try was stored (its answer lost) adds nothing. `true` when
    /// this call added the entry.
    pub async fn enqueue_once(
        &self,
        stream: &str,
        entry: &JobEntry<'_>,
        marker: &str,
        ttl: Duration,
    ) -> Result<bool, SourceError> {
        let script = redis::Script::new(ONCE);
        let mut call = script.key(marker);
        call.key(stream).arg(ttl.as_secs().max(1));
        for (name, value) in entry.fields() {
            call.arg(name).arg(value);
        }
        let added: Option<String> = call
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(map_err)?;
        Ok(added.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A redis-server on a unix socket of its own, killed when dropped.
    struct Server(std::process::Child, std::path::PathBuf);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
            let _ = std::fs::remove_file(&self.1);
        }
    }

    async fn server() -> (Server, RedisProducer) {
        let sock =
            std::env::temp_dir().join(format!("citadel-producer-{}.sock", std::process::id()));
        let child = std::process::Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
                "--unixsocket",
            ])
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server");
        let server = Server(child, sock.clone());
        let url = format!("redis+unix://{}", sock.display());
        for _ in 0..100 {
            if let Ok(p) = RedisProducer::connect(&url).await {
                return (server, p);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("redis-server did not start on {url}");
    }

    #[tokio::test]
    async fn enqueue_once_adds_the_entry_once() {
        let (_server, p) = server().await;
        let payload = serde_json::json!({"n": 1});
        let e = JobEntry::new("j-1", "noop", &payload).enqueued_at("2026-12-06T00:00:00Z");
        let ttl = Duration::from_secs(60);
        assert!(p.enqueue_once("s", &e, "sent:j-1", ttl).await.unwrap());
        assert!(!p.enqueue_once("s", &e, "sent:j-1", ttl).await.unwrap());
        p.enqueue_all("s", &[JobEntry::new("j-2", "noop", &payload)])
            .await
            .unwrap();
        type Entries = Vec<(String, Vec<(String, String)>)>;
        let entries: Entries = redis::cmd("XRANGE")
            .arg("s")
            .arg("-")
            .arg("+")
            .query_async(&mut p.conn.clone())
            .await
            .unwrap();
        let fields: Vec<_> = entries.iter().map(|(_, f)| f.clone()).collect();
        let f = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert_eq!(
            fields,
            [
                f(&[
                    ("jobId", "j-1"),
                    ("type", "noop"),
                    ("payload", r#"{"n":1}"#),
                    ("enqueuedAt", "2026-12-06T00:00:00Z"),
                ]),
                f(&[
                    ("jobId", "j-2"),
                    ("type", "noop"),
                    ("payload", r#"{"n":1}"#)
                ]),
            ]
        );
    }
}
