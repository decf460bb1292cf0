//! [`Journal`]: the append-only record of every job's lifecycle, with the live fold of every job
//! kept in memory so the runtime can ask "has this job already succeeded?" without I/O.
//!
//! Every append is checked against the fold first: an impossible event is refused and never
//! written. An accepted event is encoded and queued for the group commit ([`crate::commit`]),
//! which stores each batch as blocks of consecutive events. [`Journal::append`] returns once the
//! event is durable; [`Journal::append_buffered`] returns once it is queued (readers already see
//! it), and it becomes durable with the next group flush: the next durable append,
//! [`Journal::sync`], closing the journal, or the flusher's timer, at most about 100 ms later.
//! [`Journal::append_flushing`] is in between: it returns at once but starts a group flush, so
//! the event is durable within one flush unless the process dies first. Use the buffered forms
//! only for events that gate no settlement (`received`, `started`, chunk checkpoints, terminal
//! events followed by a durable settlement).
//!
//! This module owns the public API and the lock that orders appends; it must never touch the
//! store's layout (that is [`crate::block`], [`crate::read`] and [`crate::compact`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use citadel_transports::JobId;
use tokio::sync::watch;

use crate::codec;
use crate::commit::GroupCommit;
use crate::compact::removal_ops;
use crate::error::{JournalError, Result};
use crate::event::{now_ms, EventKind, JobEvent, NewEvent};
use crate::live::{Live, Tracked};
use crate::read::{events_at, Events};
use crate::retention::{self, CompactReport, RetentionPolicy};
use crate::state::{JobState, Phase};
use crate::store::Store;

/// Whether appends wait for the disk. `Buffered` exists to measure what durability costs; a
/// worker must run `Durable`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Durable,
    Buffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalOptions {
    pub durability: Durability,
    /// On open, journal every job left `running` as `interrupted` (a worker does this; a
    /// read-only inspection must not).
    pub recover: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        Self {
            durability: Durability::Durable,
            recover: true,
        }
    }
}

impl JournalOptions {
    /// For inspection tools: change nothing on open.
    pub fn inspect() -> Self {
        Self {
            recover: false,
            ..Self::default()
        }
    }
}

/// Stored bytes the journal could not use. They are reported, skipped and removed by `compact`;
/// every intact event around them is kept.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Damage {
    pub seq: u64,
    pub what: String,
}

/// What opening found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub events: u64,
    pub jobs: usize,
    /// Entries that could not be decoded or folded.
    pub damaged: Vec<Damage>,
    /// Jobs that were running when the journal was last closed, now journaled as interrupted.
    pub interrupted: Vec<JobId>,
}

/// Counts for `citadel journal stats` and the metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JournalInfo {
    pub path: PathBuf,
    pub events: u64,
    pub jobs: u64,
    pub last_seq: u64,
    pub size_on_disk: u64,
    pub damaged: u64,
    /// Group flushes (one fsync each) since the journal was opened (0 from a process that
    /// does not count them).
    #[serde(default)]
    pub flushes: u64,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    live: Mutex<Live>,
    commit: GroupCommit,
    options: JournalOptions,
    appended: watch::Sender<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.commit.stop();
        crate::store::note_closed(self.store.path());
    }
}

/// The job event journal. Cheap to clone; all clones share one store and one flusher.
#[derive(Debug, Clone)]
pub struct Journal {
    inner: Arc<Inner>,
}

impl Journal {
    /// Opens (creating if needed) the journal in `dir`, replays it into the live fold and, with
    /// `options.recover`, marks jobs that were running as interrupted.
    pub fn open(dir: impl AsRef<Path>, options: JournalOptions) -> Result<(Self, OpenReport)> {
        let store = Store::open(dir.as_ref())?;
        let live = Live::load(&store)?;
        for d in live.damaged.iter().map(|f| &f.damage) {
            tracing::warn!(seq = d.seq, problem = %d.what, path = %store.path().display(), "damaged journal entry skipped");
        }
        let mut report = OpenReport {
            events: live.events,
            jobs: live.jobs.len(),
            damaged: live.damaged.iter().map(|f| f.damage.clone()).collect(),
            interrupted: Vec::new(),
        };
        let running: Vec<(JobId, String)> = live
            .jobs
            .values()
            .filter(|t| t.state.phase == Some(Phase::Running))
            .map(|t| (t.state.job_id.clone(), t.state.transport.clone()))
            .collect();
        let written = live.next_seq - 1;
        let (appended, _) = watch::channel(written);
        let journal = Journal {
            inner: Arc::new(Inner {
                commit: GroupCommit::start(store.clone(), written),
                store,
                live: Mutex::new(live),
                options,
                appended,
            }),
        };
        if options.recover && !running.is_empty() {
            for (job_id, transport) in running {
                let reason = "the worker stopped while the job was running".to_string();
                journal.append_buffered(NewEvent::new(
                    job_id.clone(),
                    transport,
                    EventKind::Interrupted { reason },
                ))?;
                report.interrupted.push(job_id);
            }
            journal.inner.commit.flush_now()?;
        }
        Ok((journal, report))
    }

    pub fn path(&self) -> &Path {
        self.inner.store.path()
    }

    /// Appends `event` and returns once it is durable on disk (unless the journal was opened
    /// [`Durability::Buffered`]). Concurrent appends share one flush.
    pub async fn append(&self, event: NewEvent) -> Result<JobEvent> {
        let stored = self.append_buffered(event)?;
        if self.inner.options.durability == Durability::Durable {
            self.inner.commit.wait_durable(stored.seq).await?;
        }
        Ok(stored)
    }

    /// Appends `event` and starts a group flush without waiting for it: durable within one flush
    /// (about a millisecond on these disks), unless the process dies first. For events whose
    /// loss in a crash costs only history, such as `started` (the broker still counts the
    /// attempt), when the caller must not wait for the disk.
    pub fn append_flushing(&self, event: NewEvent) -> Result<JobEvent> {
        let stored = self.append_buffered(event)?;
        if self.inner.options.durability == Durability::Durable {
            self.inner.commit.request(stored.seq);
        }
        Ok(stored)
    }

    /// Appends `event` without waiting for the disk; see the module docs for when it is durable.
    /// Refused once a write or flush failed ([`Journal::subscribe_failure`]): nothing is kept in
    /// memory that could not be made durable.
    pub fn append_buffered(&self, event: NewEvent) -> Result<JobEvent> {
        let inner = &*self.inner;
        if let Some(why) = inner.commit.failure() {
            return Err(JournalError::Flush(why));
        }
        let mut guard = inner.live.lock().expect("journal lock poisoned");
        let live = &mut *guard;
        let stored = JobEvent {
            seq: live.next_seq,
            at_ms: now_ms(),
            job_id: event.job_id,
            transport: event.transport,
            delivery_id: event.delivery_id,
            event: event.event,
        };
        let mut next = match live.jobs.get(&stored.job_id) {
            Some(t) => t.state.clone(),
            None => JobState::new(stored.job_id.clone()),
        };
        next.apply(&stored)?;
        let value = codec::encode(&stored);
        let bytes = value.len() as u64;
        inner.commit.push(stored.seq, value);
        let tracked = live
            .jobs
            .entry(stored.job_id.clone())
            .or_insert_with(|| Tracked::new(&stored.job_id));
        tracked.state = next;
        tracked.seqs.push(stored.seq);
        tracked.bytes += bytes;
        live.next_seq += 1;
        live.events += 1;
        inner.appended.send_replace(stored.seq);
        Ok(stored)
    }

    /// The first write or flush that failed (`None` while all succeed). It never clears: the
    /// store's errors are sticky until the journal is reopened, so a worker stops (fail-stop).
    pub fn subscribe_failure(&self) -> watch::Receiver<Option<String>> {
        self.inner.commit.subscribe_failure()
    }

    /// The first failed write or flush, if one happened: the journal refuses appends since.
    pub fn failure(&self) -> Option<String> {
        self.inner.commit.failure()
    }

    /// Returns once every event appended so far is durable.
    pub async fn sync(&self) -> Result<()> {
        let through = self.inner.commit.buffered_through();
        self.inner.commit.wait_durable(through).await
    }

    /// The live fold of one job.
    pub fn state(&self, job: &JobId) -> Option<JobState> {
        let live = self.inner.live.lock().expect("journal lock poisoned");
        live.jobs.get(job).map(|t| t.state.clone())
    }

    /// The live fold of every job, in no particular order.
    pub fn states(&self) -> Vec<JobState> {
        let live = self.inner.live.lock().expect("journal lock poisoned");
        live.jobs.values().map(|t| t.state.clone()).collect()
    }

    /// Every stored event of one job, in order.
    pub fn events_of(&self, job: &JobId) -> Result<Vec<JobEvent>> {
        let seqs = {
            let live = self.inner.live.lock().expect("journal lock poisoned");
            live.jobs
                .get(job)
                .map(|t| t.seqs.clone())
                .unwrap_or_default()
        };
        events_at(&self.inner.store, &self.inner.commit, &seqs)
    }

    /// The result recorded by the job's `succeeded` event, for re-publishing on redelivery.
    pub fn recorded_result(&self, job: &JobId) -> Result<Option<serde_json::Value>> {
        let Some(seq) = self.state(job).and_then(|s| s.succeeded_seq) else {
            return Ok(None);
        };
        let events = events_at(&self.inner.store, &self.inner.commit, &[seq])?;
        match events.into_iter().next() {
            Some(JobEvent {
                event: EventKind::Succeeded { result },
                ..
            }) => Ok(Some(result)),
            _ => Ok(None),
        }
    }

    /// Every stored event from `from_seq` on, in order; undecodable entries come back as
    /// [`Damage`] so a reader can report them and go on.
    pub fn events(
        &self,
        from_seq: u64,
    ) -> impl Iterator<Item = Result<Result<JobEvent, Damage>>> + Send {
        Events::new(&self.inner.store, &self.inner.commit, from_seq)
    }

    /// The sequence number of the last event appended (0 when empty).
    pub fn last_seq(&self) -> u64 {
        *self.inner.appended.borrow()
    }

    /// Wakes on every append; the value is the last sequence number.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.appended.subscribe()
    }

    pub fn info(&self) -> JournalInfo {
        let live = self.inner.live.lock().expect("journal lock poisoned");
        JournalInfo {
            path: self.path().to_path_buf(),
            events: live.events,
            jobs: live.jobs.len() as u64,
            last_seq: live.next_seq - 1,
            size_on_disk: self.inner.store.size_on_disk(),
            damaged: live.damaged.len() as u64,
            flushes: self.inner.commit.flushes(),
        }
    }

    /// Removes settled jobs by age and size (never a job still owed a settlement) and damaged
    /// entries, then flushes. Appends wait while it runs.
    /// A failed write or flush fails the journal stop, as a failed append's flush does.
    pub fn compact(&self, policy: &RetentionPolicy) -> Result<CompactReport> {
        self.compact_store(policy).inspect_err(|e| {
            if e.is_store_failure() {
                self.inner.commit.fail(e);
            }
        })
    }

    fn compact_store(&self, policy: &RetentionPolicy) -> Result<CompactReport> {
        let inner = &*self.inner;
        let mut live = inner.live.lock().expect("journal lock poisoned");
        // Everything queued goes into the store first, so the blocks hold every event.
        inner.commit.write_out()?;
        let candidates: Vec<retention::RetentionCandidate> = live
            .jobs
            .values()
            .map(|t| retention::RetentionCandidate {
                job_id: t.state.job_id.clone(),
                settled: t.state.is_settled(),
                last_at_ms: t.state.last_at_ms,
                bytes: t.bytes,
            })
            .collect();
        let chosen = retention::select(&candidates, policy, now_ms());
        let mut report = CompactReport {
            jobs_before: live.jobs.len() as u64,
            ..CompactReport::default()
        };
        let mut remove: Vec<u64> = Vec::new();
        for job in &chosen {
            let seqs = live.jobs.get(job).map_or(&[][..], |t| &t.seqs[..]);
            remove.extend_from_slice(seqs);
            report.events_removed += seqs.len() as u64;
        }
        remove.sort_unstable();
        let damaged: Vec<(u64, u64)> = live
            .damaged
            .drain(..)
            .map(|found| (found.block, found.damage.seq))
            .collect();
        report.damaged_removed = damaged.len() as u64;
        let mut ops = vec![Store::seq_floor_op(live.next_seq - 1)];
        ops.extend(removal_ops(&inner.store, &remove, &damaged)?);
        inner.store.write(ops)?;
        for job in &chosen {
            if let Some(t) = live.jobs.remove(job) {
                report.bytes_removed += t.bytes;
            }
        }
        report.jobs_removed = chosen.len() as u64;
        live.events -= report.events_removed;
        report.jobs_after = live.jobs.len() as u64;
        drop(live);
        inner.store.flush()?;
        Ok(report)
    }

    /// Makes everything durable and releases the store (other handles keep it open).
    pub fn close(self) -> Result<()> {
        self.inner.commit.flush_now()
    }
}

/// Where a running worker serves its journal to `citadel journal`: beside the journal folder.
pub fn socket_path(dir: &Path) -> PathBuf {
    dir.with_extension("sock")
}

#[cfg(test)]
mod tests {
    use citadel_transports::Job;

    use super::*;
    use crate::{block, commit};

    fn received(id: &str) -> NewEvent {
        let job_id = JobId::new(id).unwrap();
        let job = Job {
            id: job_id.clone(),
            job_type: "noop".into(),
            payload: serde_json::json!({}),
            ray_id: None,
            enqueued_at: None,
            attempt: 1,
            source: "test".into(),
        };
        NewEvent::new(job_id, "test", EventKind::Received { job })
    }

    #[tokio::test]
    async fn damaged_entries_are_reported_and_every_intact_event_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let (j, _) = Journal::open(&path, JournalOptions::default()).unwrap();
            j.append(received("a")).await.unwrap();
            // Damage: an event from a future format, and a truncated one, between intact events.
            let mut truncated = codec::encode(&j.events(0).next().unwrap().unwrap().unwrap());
            truncated.truncate(truncated.len() - 5);
            let future = [99, 1, 2, 3];
            let blocks = block::encode([(2, &future[..]), (3, &truncated[..])]);
            let value = blocks[0].value.clone();
            j.inner
                .store
                .write(vec![Store::block_op(2, Some(value))])
                .unwrap();
            j.inner.live.lock().unwrap().next_seq = 4;
            j.append(received("b")).await.unwrap();
        }
        let (j, report) = Journal::open(&path, JournalOptions::default()).unwrap();
        let damaged: Vec<u64> = report.damaged.iter().map(|d| d.seq).collect();
        assert_eq!(damaged, vec![2, 3]);
        assert!(
            report.damaged[0].what.contains("unknown format version 99"),
            "{:?}",
            report.damaged
        );
        assert_eq!(report.events, 2);
        assert!(j.state(&JobId::new("a").unwrap()).is_some());
        assert!(j.state(&JobId::new("b").unwrap()).is_some());
        assert_eq!(j.info().damaged, 2);
        let report = j.compact(&RetentionPolicy::default()).unwrap();
        assert_eq!(report.damaged_removed, 2);
        assert_eq!(j.events(0).filter(|e| matches!(e, Ok(Err(_)))).count(), 0);
        assert_eq!(j.events(0).count(), 2);
    }

    fn event(seq: u64, id: &str) -> Vec<u8> {
        let job_id = JobId::new(id).unwrap();
        let new = received(id);
        codec::encode(&JobEvent {
            seq,
            at_ms: 1,
            job_id,
            transport: new.transport,
            delivery_id: None,
            event: new.event,
        })
    }

    #[tokio::test]
    async fn a_damaged_event_inside_a_block_spares_the_rest_of_the_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let (j, _) = Journal::open(&path, JournalOptions::default()).unwrap();
            j.append(received("a")).await.unwrap();
            // One block: intact, damaged, intact, then a frame cut short.
            let (c, bad, d) = (event(2, "c"), vec![99, 1, 2, 3], event(4, "d"));
            let blocks = block::encode([(2, &c[..]), (3, &bad[..]), (4, &d[..])]);
            let mut value = blocks[0].value.clone();
            value.extend_from_slice(&[0, 0, 0]);
            let ops = vec![Store::block_op(2, Some(value))];
            j.inner.store.write(ops).unwrap();
            j.inner.live.lock().unwrap().next_seq = 6;
            j.append(received("b")).await.unwrap();
        }
        let (j, report) = Journal::open(&path, JournalOptions::default()).unwrap();
        let damaged: Vec<u64> = report.damaged.iter().map(|d| d.seq).collect();
        assert_eq!(damaged, vec![3, 5], "{:?}", report.damaged);
        assert!(
            report.damaged[1].what.contains("cut short"),
            "{:?}",
            report.damaged
        );
        assert_eq!(report.events, 4);
        let seqs = |j: &Journal| -> Vec<u64> {
            j.events(0)
                .filter_map(|e| e.unwrap().ok().map(|e| e.seq))
                .collect()
        };
        assert_eq!(seqs(&j), vec![1, 2, 4, 6]);
        assert_eq!(j.events_of(&JobId::new("d").unwrap()).unwrap()[0].seq, 4);
        let report = j.compact(&RetentionPolicy::default()).unwrap();
        assert_eq!(report.damaged_removed, 2);
        assert_eq!(j.events(0).filter(|e| matches!(e, Ok(Err(_)))).count(), 0);
        assert_eq!(seqs(&j), vec![1, 2, 4, 6]);
        drop(j);
        let (j, report) = Journal::open(&path, JournalOptions::default()).unwrap();
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
        assert_eq!(seqs(&j), vec![1, 2, 4, 6]);
        assert_eq!(j.append(received("e")).await.unwrap().seq, 7);
    }

    #[tokio::test]
    async fn readers_see_events_that_are_not_stored_yet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        let options = JournalOptions {
            durability: Durability::Buffered,
            recover: true,
        };
        let (j, _) = Journal::open(&path, options).unwrap();
        j.append(received("a")).await.unwrap();
        j.sync().await.unwrap();
        let a = JobId::new("a").unwrap();
        let hold = j.inner.commit.hold_writes();
        j.append_buffered(NewEvent::new(
            a.clone(),
            "test",
            EventKind::Started { attempt: 1 },
        ))
        .unwrap();
        let result = serde_json::json!({"answer": 42});
        j.append_buffered(NewEvent::new(
            a.clone(),
            "test",
            EventKind::Succeeded {
                result: result.clone(),
            },
        ))
        .unwrap();
        std::thread::sleep(commit::FLUSH_INTERVAL * 2);
        let stored = j.inner.store.blocks_from(0).unwrap().count();
        assert_eq!(stored, 1, "only the first event is stored");
        let all: Vec<u64> = j.events(0).map(|e| e.unwrap().unwrap().seq).collect();
        assert_eq!(all, vec![1, 2, 3]);
        let tail: Vec<u64> = j.events(3).map(|e| e.unwrap().unwrap().seq).collect();
        assert_eq!(tail, vec![3]);
        assert_eq!(j.events_of(&a).unwrap().len(), 3);
        assert_eq!(j.recorded_result(&a).unwrap(), Some(result.clone()));
        drop(hold);
        // Nobody waits for them: the flusher's timer stores them.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while j.inner.store.blocks_from(0).unwrap().count() < 2 {
            assert!(std::time::Instant::now() < deadline, "never stored");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(j.events_of(&a).unwrap().len(), 3);
        assert_eq!(j.recorded_result(&a).unwrap(), Some(result));
        drop(j);
        let (j, report) = Journal::open(&path, options).unwrap();
        assert_eq!(report.events, 3);
        assert_eq!(j.events(0).count(), 3);
    }

    #[tokio::test]
    async fn a_truncated_store_file_opens_with_the_intact_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        {
            let (j, _) = Journal::open(&path, JournalOptions::default()).unwrap();
            for i in 0..200 {
                j.append(received(&format!("job-{i}"))).await.unwrap();
            }
        }
        let db = path.join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        let file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        file.set_len(len - 700).unwrap();
        drop(file);
        // sled recovers up to the last intact write: what survives is a prefix, intact, folded.
        let (j, report) = Journal::open(&path, JournalOptions::default()).unwrap();
        assert!(report.damaged.is_empty(), "{:?}", report.damaged);
        let seqs: Vec<u64> = j.events(0).map(|e| e.unwrap().unwrap().seq).collect();
        assert!(
            !seqs.is_empty() && seqs.len() < 200,
            "{} events survived",
            seqs.len()
        );
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
        assert_eq!(j.states().len(), seqs.len());
    }
}
