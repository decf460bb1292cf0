//! Which deliveries may be of a job already completed elsewhere, and so are looked up in its
//! completion record (`record::Lookup`) before they are handed out: a delivery counted more than
//! once (a lost ack, a lease that ran out while its owner settled), a `jobId` this fetcher has
//! handed out before (the same job enqueued twice), and any entry the stream already held when
//! this source last (re)joined its group or saw Redis fail (a group re-created from `0` replays
//! the stream's history; a restarted Redis may have lost acks and reads). A group re-created
//! while this source waited shows as a read of new entries going back to an id at or before one
//! it read before: the boundary is then read again. Entries appended later and delivered for
//! the first time cost no lookup. Pure bookkeeping: it must never do
//! I/O; the fetcher reads the streams' last ids and tells it.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::job::JobId;

/// How many handed-out job ids are remembered (the oldest are forgotten first).
const SEEN: usize = 10_000;

/// A stream entry id (`ms-seq`), ordered as Redis orders them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct EntryId(u64, u64);

impl EntryId {
    /// Parses `ms-seq` (`None` for anything else).
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.split_once('-')?;
        Some(Self(ms.parse().ok()?, seq.parse().ok()?))
    }
}

#[derive(Debug, Default)]
pub(crate) struct Suspects {
    /// Per stream, the last entry id when the boundary was last read; a stream missing here is
    /// wholly suspect (not read yet, or the read failed).
    upto: HashMap<String, EntryId>,
    /// Whether the boundary must be read again before the next delivery.
    stale: bool,
    seen: HashSet<JobId>,
    order: VecDeque<JobId>,
    /// Per stream, the highest id a read of new entries returned.
    read_max: HashMap<String, EntryId>,
}

impl Suspects {
    /// Everything is suspect until [`Suspects::set_upto`] is told the streams' last ids.
    pub fn new() -> Self {
        Self {
            stale: true,
            ..Self::default()
        }
    }

    /// Redis failed, or the group was (re)created: what the streams hold now is suspect.
    pub fn invalidate(&mut self) {
        self.upto.clear();
        self.stale = true;
    }

    pub fn is_stale(&self) -> bool {
        self.stale
    }

    /// The streams' last entry ids, read after [`Suspects::invalidate`] (`None`: empty stream).
    pub fn set_upto<'a>(&mut self, last: impl IntoIterator<Item = (&'a str, Option<EntryId>)>) {
        for (stream, id) in last {
            self.upto
                .insert(stream.to_owned(), id.unwrap_or(EntryId(0, 0)));
        }
        self.stale = false;
    }

    /// Notes entry `id` returned by a read of new entries (`>`); true when the group's position
    /// went back (the group was re-created or moved): call [`Suspects::invalidate`].
    pub fn went_back(&mut self, stream: &str, id: &str) -> bool {
        let Some(id) = EntryId::parse(id) else {
            return false;
        };
        match self.read_max.get_mut(stream) {
            Some(max) if id <= *max => true,
            Some(max) => {
                *max = id;
                false
            }
            None => {
                self.read_max.insert(stream.to_owned(), id);
                false
            }
        }
    }

    /// Whether the delivery of entry `id` of `stream`, for job `job` and counted `deliveries`
    /// times, must be looked up; remembers `job` as seen.
    pub fn check(&mut self, stream: &str, id: &str, deliveries: u32, job: &JobId) -> bool {
        let old = match (self.upto.get(stream), EntryId::parse(id)) {
            (Some(upto), Some(id)) => id <= *upto,
            _ => true,
        };
        let again = !self.remember(job);
        deliveries > 1 || again || old
    }

    /// Remembers `job`; false when it was already remembered.
    fn remember(&mut self, job: &JobId) -> bool {
        if !self.seen.insert(job.clone()) {
            return false;
        }
        self.order.push_back(job.clone());
        if self.order.len() > SEEN {
            if let Some(oldest) = self.order.pop_front() {
                self.seen.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn id(s: &str) -> JobId {
        JobId::new(s).unwrap()
    }

    #[test]
    fn entry_ids_order_like_redis() {
        assert!(EntryId::parse("5-10").unwrap() > EntryId::parse("5-9").unwrap());
        assert!(EntryId::parse("6-0").unwrap() > EntryId::parse("5-99").unwrap());
        assert_eq!(EntryId::parse("x-1"), None);
        assert_eq!(EntryId::parse("17"), None);
    }

    #[test]
    fn only_fresh_first_deliveries_of_new_ids_skip_the_lookup() {
        let mut s = Suspects::new();
        assert!(s.check("s", "1-0", 1, &id("a")), "nothing known yet");
        s.set_upto([("s", EntryId::parse("10-0"))]);
        assert!(!s.is_stale());
        assert!(s.check("s", "10-0", 1, &id("b")), "held before");
        assert!(!s.check("s", "11-0", 1, &id("c")), "fresh");
        assert!(s.check("s", "12-0", 1, &id("c")), "same job again");
        assert!(s.check("s", "13-0", 2, &id("d")), "counted twice");
        assert!(s.check("t", "13-0", 1, &id("e")), "a stream not read");
        s.invalidate();
        assert!(s.is_stale());
        assert!(s.check("s", "14-0", 1, &id("f")), "after a failure");
        s.set_upto([("s", None)]);
        assert!(!s.check("s", "15-0", 1, &id("g")), "an empty stream");
    }

    #[test]
    fn a_read_going_back_is_noticed() {
        let mut s = Suspects::new();
        assert!(!s.went_back("s", "5-0"));
        assert!(!s.went_back("s", "6-0"));
        assert!(!s.went_back("t", "1-0"), "streams apart");
        assert!(s.went_back("s", "6-0"));
        assert!(s.went_back("s", "1-0"));
        assert!(!s.went_back("s", "7-0"));
    }

    proptest! {
        /// Against a model: suspect exactly when counted twice, held at the boundary, or a
        /// job id among the last remembered ones.
        #[test]
        fn matches_the_model(
            upto in 0u64..50,
            deliveries in proptest::collection::vec((0u64..100, 1u32..3, 0u8..20), 1..60),
        ) {
            let mut s = Suspects::new();
            s.set_upto([("s", Some(EntryId(upto, 0)))]);
            let mut seen = HashSet::new();
            for (ms, count, job) in deliveries {
                let job = id(&format!("j{job}"));
                let expect = count > 1 || ms <= upto || seen.contains(&job);
                seen.insert(job.clone());
                prop_assert_eq!(s.check("s", &format!("{ms}-0"), count, &job), expect);
            }
        }
    }
}
