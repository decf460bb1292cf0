//! The jobs' secondary indexes, for the web console: every job's id by state and by submission
//! order (newest first), its type, creation time and the last worker that leased it, plus the
//! jobs finished per minute. The store notes each record it writes ([`Index::note`]) and each
//! job it removes ([`Index::forget`]); a page of jobs is then a walk of one ordered set that stops
//! once the page is full, not a scan and sort of every job. It holds no job state that decides
//! anything: it must never be read by the queue, the claim or the settle path, and it must never
//! do I/O.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::record::{JobRecord, QueueState};

/// The states, in the order the console shows them.
pub const STATES: [QueueState; 6] = [
    QueueState::Queued,
    QueueState::Leased,
    QueueState::Succeeded,
    QueueState::Failed,
    QueueState::Cancelled,
    QueueState::Dead,
];

/// Minutes of finished-job counts kept.
const MINUTES_KEPT: u64 = 60;

fn slot(s: QueueState) -> usize {
    STATES.iter().position(|x| *x == s).unwrap_or(0)
}

/// What the index knows of one job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub state: QueueState,
    pub seq: u64,
    pub job_type: String,
    /// Unix milliseconds (0 when the record's time could not be read).
    pub created_ms: u64,
    /// The worker of the job's last lease, if it was ever leased.
    pub worker: Option<String>,
}

/// Which jobs a page holds: each filter that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub state: Option<QueueState>,
    pub job_type: Option<String>,
    /// A substring of the last worker's name.
    pub worker: Option<String>,
    /// Created at or after (Unix ms).
    pub since_ms: Option<u64>,
    /// Created before (Unix ms).
    pub until_ms: Option<u64>,
}

impl Filter {
    fn admits(&self, e: &Entry) -> bool {
        self.job_type.as_ref().is_none_or(|t| &e.job_type == t)
            && self.until_ms.is_none_or(|u| e.created_ms < u)
            && self.since_ms.is_none_or(|s| e.created_ms >= s)
            && self
                .worker
                .as_ref()
                .is_none_or(|w| e.worker.as_deref().is_some_and(|x| x.contains(w.as_str())))
    }
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<String, Entry>,
    /// (seq, id) of every job, and of each state's jobs.
    all: BTreeSet<(u64, String)>,
    by_state: [BTreeSet<(u64, String)>; 6],
    /// (minute since the epoch, jobs that became final in it), oldest first.
    finished: VecDeque<(u64, u64)>,
}

/// The indexes; cheap to update, one short lock per store write.
#[derive(Debug, Default)]
pub struct Index {
    inner: Mutex<Inner>,
}

fn created_ms(r: &JobRecord) -> u64 {
    humantime::parse_rfc3339_weak(&r.created_at)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Index {
    /// The index of the records a store holds at start.
    pub fn of<'a>(records: impl IntoIterator<Item = &'a JobRecord>) -> Self {
        let index = Index::default();
        {
            let mut i = index.lock();
            for r in records {
                i.put(r, None);
            }
        }
        index
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes records just written; a job that became final now counts for `now_ms`'s minute.
    pub fn note(&self, records: &[JobRecord], now_ms: u64) {
        let mut i = self.lock();
        for r in records {
            i.put(r, Some(now_ms));
        }
    }

    /// Forgets removed jobs.
    pub fn forget(&self, ids: &[String]) {
        let mut i = self.lock();
        for id in ids {
            if let Some(e) = i.by_id.remove(id) {
                let key = (e.seq, id.clone());
                i.all.remove(&key);
                i.by_state[slot(e.state)].remove(&key);
            }
        }
    }

    /// How many jobs are in each state, in [`STATES`] order.
    pub fn counts(&self) -> Vec<(QueueState, usize)> {
        let i = self.lock();
        STATES
            .iter()
            .map(|s| (*s, i.by_state[slot(*s)].len()))
            .collect()
    }

    /// Jobs that became final in each of the last `minutes` minutes before `now_ms`, oldest
    /// first (the current minute last).
    pub fn finished_per_minute(&self, now_ms: u64, minutes: u64) -> Vec<u64> {
        let i = self.lock();
        let now = now_ms / 60_000;
        (0..minutes)
            .rev()
            .map(|back| {
                let m = now.saturating_sub(back);
                i.finished
                    .iter()
                    .find(|(x, _)| *x == m)
                    .map_or(0, |(_, n)| *n)
            })
            .collect()
    }

    /// The entry of one job.
    pub fn entry(&self, id: &str) -> Option<Entry> {
        self.lock().by_id.get(id).cloned()
    }

    /// Walks the jobs `filter` admits, newest first, skipping `skip` of those `more` also
    /// accepts and returning up to `take` ids; the bool says whether more follow. `more` (a
    /// check that needs the record, like a payload search) runs with no lock of this index held,
    /// so it may read the store.
    pub fn page(
        &self,
        filter: &Filter,
        skip: usize,
        take: usize,
        mut more: impl FnMut(&str) -> bool,
    ) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        let mut seen = 0usize;
        let mut before = u64::MAX;
        loop {
            let (batch, end) = self.admitted(filter, before, 256);
            for (seq, id) in batch {
                before = seq;
                if !more(&id) {
                    continue;
                }
                if seen >= skip {
                    if out.len() == take {
                        return (out, true);
                    }
                    out.push(id);
                }
                seen += 1;
            }
            if end {
                return (out, false);
            }
        }
    }

    /// Up to `n` of the jobs `filter` admits submitted before `before` (a seq), newest first;
    /// the bool says whether the walk reached the end.
    fn admitted(&self, filter: &Filter, before: u64, n: usize) -> (Vec<(u64, String)>, bool) {
        let i = self.lock();
        let set = match filter.state {
            Some(s) => &i.by_state[slot(s)],
            None => &i.all,
        };
        let mut out = Vec::new();
        for (seq, id) in set.range(..(before, String::new())).rev() {
            let Some(e) = i.by_id.get(id) else { continue };
            if filter.since_ms.is_some_and(|s| e.created_ms < s) && e.created_ms != 0 {
                // Submission order follows creation time: nothing older can match.
                return (out, true);
            }
            if filter.admits(e) {
                out.push((*seq, id.clone()));
                if out.len() == n {
                    return (out, false);
                }
            }
        }
        (out, true)
    }
}

impl Inner {
    fn put(&mut self, r: &JobRecord, now_ms: Option<u64>) {
        let worker = r.lease.as_ref().map(|l| l.worker.clone());
        let old = self.by_id.get_mut(&r.id);
        let was_final = old.as_ref().is_some_and(|e| e.state.is_final());
        if let Some(e) = old {
            if e.state != r.state {
                let key = (e.seq, r.id.clone());
                self.by_state[slot(e.state)].remove(&key);
                self.by_state[slot(r.state)].insert(key);
                e.state = r.state;
            }
            if worker.is_some() {
                e.worker = worker;
            }
        } else {
            let e = Entry {
                state: r.state,
                seq: r.seq,
                job_type: r.job_type.clone(),
                created_ms: created_ms(r),
                worker,
            };
            self.all.insert((r.seq, r.id.clone()));
            self.by_state[slot(r.state)].insert((r.seq, r.id.clone()));
            self.by_id.insert(r.id.clone(), e);
        }
        if let (Some(now), true, false) = (now_ms, r.state.is_final(), was_final) {
            self.count_finished(now);
        }
    }

    fn count_finished(&mut self, now_ms: u64) {
        let minute = now_ms / 60_000;
        match self.finished.back_mut() {
            Some((m, n)) if *m == minute => *n += 1,
            _ => self.finished.push_back((minute, 1)),
        }
        while self
            .finished
            .front()
            .is_some_and(|(m, _)| *m + MINUTES_KEPT < minute)
        {
            self.finished.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rec(id: &str, seq: u64, ty: &str, state: QueueState) -> JobRecord {
        let mut r: JobRecord = serde_json::from_value(serde_json::json!({
            "id": id, "type": ty, "payload": {}, "state": "queued", "attempts": 0,
            "max_attempts": 3, "created_at": super::super::record::rfc3339_ms(seq * 1000),
            "updated_at": "", "seq": seq,
        }))
        .unwrap();
        r.state = state;
        r
    }

    proptest! {
        /// A page is exactly what filtering and sorting every job would give.
        #[test]
        fn pages_match_a_full_scan(
            jobs in prop::collection::vec((0usize..6, 0usize..3), 0..60),
            moves in prop::collection::vec((0usize..60, 0usize..6), 0..30),
            gone in prop::collection::vec(0usize..60, 0..10),
            state in prop::option::of(0usize..6),
            ty in prop::option::of(0usize..3),
            since in prop::option::of(0u64..60),
            skip in 0usize..10,
            take in 1usize..10,
        ) {
            let types = ["a", "b", "c"];
            let mut model: Vec<JobRecord> = jobs.iter().enumerate()
                .map(|(n, (s, t))| rec(&format!("j{n}"), n as u64, types[*t], STATES[*s]))
                .collect();
            let index = Index::of(model.iter());
            for (n, s) in moves {
                if let Some(r) = model.get_mut(n) {
                    r.state = STATES[s];
                    index.note(std::slice::from_ref(r), 0);
                }
            }
            let gone: Vec<String> = gone.iter().map(|n| format!("j{n}")).collect();
            index.forget(&gone);
            model.retain(|r| !gone.contains(&r.id));
            let f = Filter {
                state: state.map(|s| STATES[s]),
                job_type: ty.map(|t| types[t].to_string()),
                since_ms: since.map(|s| s * 1000),
                ..Filter::default()
            };
            let mut want: Vec<&JobRecord> = model.iter()
                .filter(|r| f.state.is_none_or(|s| r.state == s))
                .filter(|r| f.job_type.as_ref().is_none_or(|t| &r.job_type == t))
                .filter(|r| f.since_ms.is_none_or(|s| r.seq * 1000 >= s))
                .collect();
            want.sort_by_key(|r| std::cmp::Reverse(r.seq));
            let more = want.len() > skip + take;
            let want: Vec<String> = want.into_iter().skip(skip).take(take).map(|r| r.id.clone()).collect();
            prop_assert_eq!(index.page(&f, skip, take, |_| true), (want, more));
            let total: usize = index.counts().iter().map(|(_, n)| n).sum();
            prop_assert_eq!(total, model.len());
        }
    }

    #[test]
    fn finishing_counts_once_in_its_minute() {
        let index = Index::default();
        let mut r = rec("a", 1, "t", QueueState::Queued);
        index.note(std::slice::from_ref(&r), 60_000);
        r.state = QueueState::Succeeded;
        index.note(std::slice::from_ref(&r), 120_500);
        index.note(std::slice::from_ref(&r), 120_600);
        assert_eq!(index.finished_per_minute(180_000, 3), vec![0, 1, 0]);
    }
}
