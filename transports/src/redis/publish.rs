//! Job events on Redis (docs/wire-format.md#job-events): each event `PUBLISH`es on
//! `stream:v1:{jobId}`, is appended to the capped, expiring stream `stream:v1:{jobId}:events`
//! (fields `type` and `event`, so a late subscriber can resume from an index or an entry id;
//! kept `events_grace` after the job's terminal event), and updates the status hash
//! `job:{jobId}:status` (and writes the completion record of an `end`), all in one script call
//! (`record`). One [`Publisher`] task sends every event of the source, the completion records
//! written ahead of an `end`, and the `end`s that carry their entry's ack (`scripts`): whatever
//! is queued while a batch is in flight goes out as the next single pipeline (one write, one
//! round trip), in order; each caller waits for the answers to its own commands. Scripts are
//! called by their SHA; the ones a Redis forgot (it restarted) are loaded and those commands
//! alone sent again ([`send`]: a refused `EVALSHA` ran nothing). This module must never decide
//! which event is due.

use redis::aio::ConnectionManager;
use redis::{Cmd, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{trace, warn};

use super::config::RedisConfig;
use super::conn::map_err;
use super::record::{self, Write};
use crate::events::WireEvent;
use crate::source::SourceError;

/// The most requests sent in one pipeline.
const MAX_BATCH: usize = 512;

/// Each command's answer, or what kept the whole pipeline from Redis.
type Answer = Result<Vec<Result<Value, SourceError>>, SourceError>;
type Request = (Vec<Cmd>, oneshot::Sender<Answer>);

/// The source's sender of events and of what travels with them.
#[derive(Debug)]
pub(crate) struct Publisher {
    tx: mpsc::UnboundedSender<Request>,
    cfg: RedisConfig,
}

impl Publisher {
    /// Starts the sending task on `conn`; `scripts` are the texts of every script its commands
    /// may call.
    pub(crate) fn start(
        conn: ConnectionManager,
        cfg: RedisConfig,
        scripts: Vec<String>,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Self { tx, cfg }, tokio::spawn(run(rx, conn, scripts)))
    }

    /// Sends `event` (batched with whatever else is waiting) and returns once Redis has it.
    pub(crate) async fn publish(&self, event: &WireEvent) -> Result<(), SourceError> {
        first_error(self.send(vec![self.event(event)]).await)
    }

    /// Writes the completion record of `end` (not published) and returns once Redis has it.
    pub(crate) async fn record(&self, end: &WireEvent) -> Result<(), SourceError> {
        first_error(
            self.send(vec![record::command(&self.cfg, Write::Record, end)])
                .await,
        )
    }

    /// Queues `event` and returns at once: it goes out in order with the rest, and a failure
    /// is logged here.
    pub(crate) fn post(&self, event: &WireEvent) {
        self.post_all(std::slice::from_ref(event));
    }

    /// Queues `events` (of one job, at least one) as one script call, and returns at once, as
    /// [`Publisher::post`] does.
    pub(crate) fn post_all(&self, events: &[WireEvent]) {
        let (done, _) = oneshot::channel();
        let cmd = record::command_all(&self.cfg, Write::Event, events);
        let _ = self.tx.send((vec![cmd], done));
    }

    /// The command that publishes `event` (for [`Publisher::send`]).
    pub(crate) fn event(&self, event: &WireEvent) -> Cmd {
        record::command(&self.cfg, Write::Event, event)
    }

    /// Sends `cmds` in this order, in the next pipeline, and returns their answers.
    pub(crate) async fn send(&self, cmds: Vec<Cmd>) -> Answer {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((cmds, done))
            .map_err(|_| SourceError::Closed)?;
        answer.await.map_err(|_| SourceError::Closed)?
    }
}

/// `Ok` if every command of `answer` succeeded, else the first error.
fn first_error(answer: Answer) -> Result<(), SourceError> {
    answer?
        .into_iter()
        .find_map(Result::err)
        .map_or(Ok(()), Err)
}

async fn run(
    mut rx: mpsc::UnboundedReceiver<Request>,
    mut conn: ConnectionManager,
    scripts: Vec<String>,
) {
    let mut batch: Vec<Request> = Vec::new();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let cmds: Vec<&Cmd> = batch.iter().flat_map(|(cmds, _)| cmds).collect();
        let sent = send(&mut conn, &cmds, &scripts).await;
        trace!(
            requests = batch.len(),
            commands = cmds.len(),
            ok = sent.is_ok(),
            "sent job events"
        );
        let mut answers = sent.map(Vec::into_iter);
        for (cmds, done) in batch.drain(..) {
            let answer = match &mut answers {
                Err(e) => Err(e.clone()),
                Ok(all) => Ok(all
                    .by_ref()
                    .take(cmds.len())
                    .map(|r| r.map_err(map_err))
                    .collect()),
            };
            if let Err(answer) = done.send(answer) {
                // Nobody waits for it (`post`): say what went wrong, if anything.
                if let Err(e) = first_error(answer) {
                    warn!(error = %e, "a job event sent without waiting could not be published");
                }
            }
        }
    }
}

/// Sends `cmds` in one pipeline and returns each one's answer. The ones Redis refused with
/// `NOSCRIPT` are sent once more, alone, after `scripts` are loaded.
pub(crate) async fn send(
    conn: &mut ConnectionManager,
    cmds: &[&Cmd],
    scripts: &[String],
) -> Result<Vec<RedisResult<Value>>, SourceError> {
    let mut answers = pipeline(conn, cmds.iter().copied()).await?;
    let refused: Vec<usize> = (0..answers.len())
        .filter(|&i| matches!(&answers[i], Err(e) if e.code() == Some("NOSCRIPT")))
        .collect();
    if refused.is_empty() {
        return Ok(answers);
    }
    for text in scripts {
        redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(text)
            .query_async::<String>(conn)
            .await
            .map_err(map_err)?;
    }
    let again = pipeline(conn, refused.iter().map(|&i| cmds[i])).await?;
    for (i, answer) in refused.into_iter().zip(again) {
        answers[i] = answer;
    }
    Ok(answers)
}

async fn pipeline<'a>(
    conn: &mut ConnectionManager,
    cmds: impl Iterator<Item = &'a Cmd>,
) -> Result<Vec<RedisResult<Value>>, SourceError> {
    let mut p = redis::pipe();
    p.ignore_errors();
    for c in cmds {
        p.add_command(c.clone());
    }
    p.query_async(conn).await.map_err(map_err)
}
