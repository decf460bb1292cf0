//! [`Journal`]: the append-only record of every job's lifecycle, with the live fold of every job
//! kept in memory so the runtime can ask "has this job already succeeded?" without I/O.
//!
//! Every append is checked against the fold first: an impossible event is refused and never
//! written. [`Journal::append`] returns once the event is durable (group-committed);
//! [`Journal::append_buffered`] returns once it is written, and it becomes durable with the next
//! group flush (the next durable append, [`Journal::sync`], or sled's own flush within 500 ms).
//! Use the buffered form only for events that gate no settlement (chunk checkpoints, `started`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use citadel_transports::JobId;
use tokio::sync::watch;

use crate::codec;
use crate::commit::GroupCommit;
use crate::error::Result;
use crate::event::{now_ms, EventKind, JobEvent, NewEvent};
use crate::retention::{self, CompactReport, RetentionPolicy};
use crate::state::{JobState, Phase};
use crate::store::{Op, Store};

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
}

/// One job in memory: its fold, the sequence numbers of its events (the job → events index,
/// rebuilt by the scan on open) and their encoded size (for retention).
#[derive(Debug)]
struct Tracked {
    state: JobState,
    seqs: Vec<u64>,
    bytes: u64,
}

#[derive(Debug)]
struct Live {
    next_seq: u64,
    events: u64,
    jobs: HashMap<JobId, Tracked>,
    damaged: Vec<Damage>,
}

/// Stored events handed from the store walker to the fold per message while opening.
const REPLAY_CHUNK: usize = 1024;

impl Live {
    /// Folds one stored event during open; bad bytes and refused events become [`Damage`].
    fn replay_one(&mut self, seq: u64, bytes: &[u8]) {
        let event = match codec::decode(bytes) {
            Ok(ev) => ev,
            Err(e) => {
                self.damaged.push(Damage {
                    seq,
                    what: e.to_string(),
                });
                return;
            }
        };
        let tracked = self
            .jobs
            .entry(event.job_id.clone())
            .or_insert_with(|| Tracked {
                state: JobState::new(event.job_id.clone()),
                seqs: Vec::new(),
                bytes: 0,
            });
        match tracked.state.apply(&event) {
            Ok(()) => {
                tracked.seqs.push(seq);
                tracked.bytes += bytes.len() as u64;
                self.events += 1;
            }
            Err(e) => self.damaged.push(Damage {
                seq,
                what: e.to_string(),
            }),
        }
    }
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
        let mut live = Live {
            next_seq: store.seq_high_water()? + 1,
            events: 0,
            jobs: HashMap::new(),
            damaged: Vec::new(),
        };
        // Two cores' worth of replay: one thread walks the store, this one decodes and folds.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(u64, Vec<u8>)>>(16);
        let walker_store = store.clone();
        let walker = std::thread::spawn(move || -> Result<()> {
            let mut chunk = Vec::with_capacity(REPLAY_CHUNK);
            for raw in walker_store.events_from(0) {
                let (seq, bytes) = raw?;
                chunk.push((seq, bytes.to_vec()));
                if chunk.len() == REPLAY_CHUNK && tx.send(std::mem::take(&mut chunk)).is_err() {
                    return Ok(());
                }
            }
            let _ = tx.send(chunk);
            Ok(())
        });
        for (seq, bytes) in rx.into_iter().flatten() {
            live.replay_one(seq, &bytes);
        }
        walker.join().expect("the journal replay thread panicked")?;
        live.jobs.retain(|_, t| t.state.phase.is_some());
        for d in &live.damaged {
            tracing::warn!(seq = d.seq, problem = %d.what, path = %store.path().display(), "damaged journal entry skipped");
        }
        let mut report = OpenReport {
            events: live.events,
            jobs: live.jobs.len(),
            damaged: live.damaged.clone(),
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
            journal.inner.store.flush()?;
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

    /// Appends `event` without waiting for the disk; see the module docs for when it is durable.
    pub fn append_buffered(&self, event: NewEvent) -> Result<JobEvent> {
        let inner = &*self.inner;
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
        inner
            .store
            .write(vec![(codec::event_key(stored.seq).to_vec(), Some(value))])?;
        let tracked = live
            .jobs
            .entry(stored.job_id.clone())
            .or_insert_with(|| Tracked {
                state: JobState::new(stored.job_id.clone()),
                seqs: Vec::new(),
                bytes: 0,
            });
        tracked.state = next;
        tracked.seqs.push(stored.seq);
        tracked.bytes += bytes;
        live.next_seq += 1;
        live.events += 1;
        inner.commit.written(stored.seq);
        inner.appended.send_replace(stored.seq);
        Ok(stored)
    }

    /// Returns once every event appended so far is durable.
    pub async fn sync(&self) -> Result<()> {
        let through = self.inner.commit.written_through();
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
        let mut out = Vec::new();
        for seq in seqs {
            if let Some(bytes) = self.inner.store.event(seq)? {
                if let Ok(ev) = codec::decode(&bytes) {
                    out.push(ev);
                }
            }
        }
        Ok(out)
    }

    /// The result recorded by the job's `succeeded` event, for re-publishing on redelivery.
    pub fn recorded_result(&self, job: &JobId) -> Result<Option<serde_json::Value>> {
        let Some(seq) = self.state(job).and_then(|s| s.succeeded_seq) else {
            return Ok(None);
        };
        let Some(bytes) = self.inner.store.event(seq)? else {
            return Ok(None);
        };
        match codec::decode(&bytes) {
            Ok(JobEvent {
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
        self.inner.store.events_from(from_seq).map(|raw| {
            let (seq, bytes) = raw?;
            Ok(codec::decode(&bytes).map_err(|e| Damage {
                seq,
                what: e.to_string(),
            }))
        })
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
        }
    }

    /// Removes settled jobs by age and size (never a job still owed a settlement) and damaged
    /// entries, then flushes. Appends wait while it runs.
    pub fn compact(&self, policy: &RetentionPolicy) -> Result<CompactReport> {
        let inner = &*self.inner;
        let mut live = inner.live.lock().expect("journal lock poisoned");
        let candidates: Vec<retention::Candidate> = live
            .jobs
            .values()
            .map(|t| retention::Candidate {
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
        let mut ops: Vec<Op> = vec![Store::seq_floor_op(live.next_seq - 1)];
        for d in live.damaged.drain(..) {
            ops.push((codec::event_key(d.seq).to_vec(), None));
            report.damaged_removed += 1;
        }
        for job in &chosen {
            for &seq in live.jobs.get(job).map_or(&[][..], |t| &t.seqs[..]) {
                ops.push((codec::event_key(seq).to_vec(), None));
                report.events_removed += 1;
            }
            if ops.len() > 10_000 {
                inner.store.write(std::mem::take(&mut ops))?;
            }
        }
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
        self.inner.store.flush()
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
            j.inner
                .store
                .write(vec![
                    (codec::event_key(2).to_vec(), Some(vec![99, 1, 2, 3])),
                    (codec::event_key(3).to_vec(), Some(truncated)),
                ])
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
