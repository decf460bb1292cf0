//! The subject set the NATS fetcher reads (docs/transports.md#routing): each subject with its
//! priority and its durable pull consumer, fixed (`subjects`, all of one priority) or followed
//! live from a [`RouteFeed`] when the worker derives them from its capabilities. A new subject
//! gets its consumer (created when missing) before it is read; a subject that leaves the set is
//! no longer pulled, but what was claimed from it still settles (`known`).
//!
//! It owns the set; it must never pull or settle a message.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Mutex, PoisonError};

use async_nats::jetstream::{consumer::PullConsumer, stream};
use tracing::{info, warn};

use super::config::{valid_subject, NatsConfig};
use crate::routing::{self, RouteFeed};
use crate::source::SourceError;

/// One subject read, how urgently, and its consumer.
#[derive(Debug, Clone)]
pub(crate) struct Lane {
    pub subject: String,
    pub priority: u8,
    pub consumer: PullConsumer,
    /// What the looks for acks of lost messages remember of the consumer (`ghosts`).
    pub looked: super::ghosts::Looked,
}

/// The fetcher's view of the set, highest priority first.
#[derive(Debug)]
pub(crate) struct Lanes {
    feed: Option<RouteFeed>,
    pub lanes: Vec<Lane>,
}

/// Every subject read since the start (receipts from those may still settle), and the jobs
/// claimed from each.
#[derive(Debug, Default)]
pub(crate) struct Known(Mutex<(HashSet<String>, BTreeMap<String, u64>)>);

impl Known {
    fn lock(&self) -> std::sync::MutexGuard<'_, (HashSet<String>, BTreeMap<String, u64>)> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn add(&self, subjects: impl IntoIterator<Item = String>) {
        self.lock().0.extend(subjects);
    }

    pub fn contains(&self, subject: &str) -> bool {
        self.lock().0.contains(subject)
    }

    pub fn claimed(&self, subject: &str) {
        *self.lock().1.entry(subject.to_owned()).or_default() += 1;
    }

    pub fn claims(&self) -> BTreeMap<String, u64> {
        self.lock().1.clone()
    }
}

/// The subjects to start with, and the feed to follow (taken from `cfg`): the feed's set as
/// subjects, marked seen, or the configured subjects at the base priority.
pub(crate) fn first_set(cfg: &NatsConfig) -> (Option<RouteFeed>, Vec<(String, u8)>) {
    let mut feed = cfg.routes.clone();
    let set = match feed.as_mut() {
        Some(f) => subjects_of(&f.current()),
        None => routing::fixed(&cfg.subjects),
    };
    (feed, set)
}

/// The subjects of a route set; a name that is no valid subject is left out (with a warning).
/// Highest priority first, then by name.
fn subjects_of(set: &[(String, u8)]) -> Vec<(String, u8)> {
    let mut out: Vec<(String, u8)> = set
        .iter()
        .map(|(s, p)| (routing::nats_subject_of(s), *p))
        .filter(|(s, _)| {
            let ok = valid_subject(s, false);
            if !ok {
                warn!(subject = %s, "a derived job subject is not a valid NATS subject; not read");
            }
            ok
        })
        .collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

impl Lanes {
    pub fn new(
        feed: Option<RouteFeed>,
        set: &[(String, u8)],
        consumers: Vec<PullConsumer>,
    ) -> Self {
        let lanes = set
            .iter()
            .zip(consumers)
            .map(|((subject, priority), consumer)| Lane {
                subject: subject.clone(),
                priority: *priority,
                consumer,
                looked: Default::default(),
            })
            .collect();
        Self { feed, lanes }
    }

    pub fn subjects(&self) -> Vec<String> {
        self.lanes.iter().map(|l| l.subject.clone()).collect()
    }

    /// Whether every subject has the same priority (then the subjects are pulled in turn).
    pub fn flat(&self) -> bool {
        self.lanes
            .windows(2)
            .all(|w| w[0].priority == w[1].priority)
    }

    /// The lanes by priority, highest first.
    pub fn levels(&self) -> Vec<Vec<Lane>> {
        let mut out: Vec<Vec<Lane>> = Vec::new();
        for l in &self.lanes {
            match out.last_mut() {
                Some(level) if level[0].priority == l.priority => level.push(l.clone()),
                _ => out.push(vec![l.clone()]),
            }
        }
        out
    }

    /// Takes a changed set from the feed: the consumers of new subjects first (a change whose
    /// consumers could not be had is tried again next round).
    pub async fn follow(
        &mut self,
        jobs: &stream::Stream,
        cfg: &NatsConfig,
        known: &Known,
    ) -> Result<(), SourceError> {
        let Some(feed) = self.feed.as_mut().filter(|f| f.changed()) else {
            return Ok(());
        };
        let next = subjects_of(&feed.peek());
        let now: Vec<(String, u8)> = self
            .lanes
            .iter()
            .map(|l| (l.subject.clone(), l.priority))
            .collect();
        if next.is_empty() || next == now {
            feed.current();
            return Ok(());
        }
        let mut lanes = Vec::with_capacity(next.len());
        for (subject, priority) in &next {
            let (consumer, looked) = match self.lanes.iter().find(|l| &l.subject == subject) {
                Some(l) => (l.consumer.clone(), l.looked),
                None => (
                    super::setup::consumer_for(jobs, cfg, subject).await?,
                    Default::default(),
                ),
            };
            lanes.push(Lane {
                subject: subject.clone(),
                priority: *priority,
                consumer,
                looked,
            });
        }
        feed.current();
        let added: Vec<&String> = next
            .iter()
            .filter(|(s, _)| !now.iter().any(|(o, _)| o == s))
            .map(|(s, _)| s)
            .collect();
        let removed: Vec<&String> = now
            .iter()
            .filter(|(s, _)| !next.iter().any(|(n, _)| n == s))
            .map(|(s, _)| s)
            .collect();
        info!(added = ?added, removed = ?removed, subjects = next.len(), "the job subjects changed");
        known.add(next.iter().map(|(s, _)| s.clone()));
        self.lanes = lanes;
        Ok(())
    }
}
