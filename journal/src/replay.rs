//! Replay: fold a stream of stored events into every job's state as of any point (a sequence
//! number or a time). Pure; used by `citadel journal` on events read locally or through a
//! running worker's socket. Refused events are reported, never applied.

use std::collections::BTreeMap;

use citadel_transports::JobId;

use crate::event::JobEvent;
use crate::state::JobState;

/// Where to stop replaying: everything up to and including this point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Until {
    #[default]
    End,
    Seq(u64),
    TimeMs(u64),
}

impl Until {
    fn includes(&self, ev: &JobEvent) -> bool {
        match *self {
            Until::End => true,
            Until::Seq(s) => ev.seq <= s,
            Until::TimeMs(t) => ev.at_ms <= t,
        }
    }
}

/// The states of every job, by id, plus the events the fold refused.
#[derive(Debug, Clone, Default)]
pub struct Replay {
    pub states: BTreeMap<JobId, JobState>,
    pub refused: Vec<(u64, String)>,
    pub events: u64,
}

/// Folds `events` (in sequence order) up to `until`.
pub fn replay<'a>(events: impl IntoIterator<Item = &'a JobEvent>, until: Until) -> Replay {
    let mut out = Replay::default();
    for ev in events {
        if !until.includes(ev) {
            continue;
        }
        let state = out
            .states
            .entry(ev.job_id.clone())
            .or_insert_with(|| JobState::new(ev.job_id.clone()));
        match state.apply(ev) {
            Ok(()) => out.events += 1,
            Err(e) => out.refused.push((ev.seq, e.to_string())),
        }
    }
    out.states.retain(|_, s| s.phase.is_some());
    out
}
