//! What a source hands the runtime: a [`Delivery`] (a parsed job plus the [`Receipt`] to settle
//! it with) or a [`Malformed`] entry (something the broker holds that is not a job, still
//! settleable so it never stalls the queue). Plain data only: this module must never talk to a
//! broker or decide what happens to a job.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobId};

/// The opaque handle a transport needs to settle one delivery: the queue it came from and the
/// broker's id for it (a Redis stream entry id, a JetStream sequence, ...). Serializable so the
/// runtime can journal it and settle after a restart.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Receipt {
    queue: String,
    id: String,
}

impl Receipt {
    pub fn new(queue: impl Into<String>, id: impl Into<String>) -> Self {
        Self {
            queue: queue.into(),
            id: id.into(),
        }
    }

    /// The queue (Redis: the stream key) the delivery came from.
    pub fn queue(&self) -> &str {
        &self.queue
    }

    /// The broker's id of the delivery (Redis: the stream entry id).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Display for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.queue, self.id)
    }
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receipt({}/{})", self.queue, self.id)
    }
}

/// One job delivered to this worker, with the receipt that settles it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub job: Job,
    pub receipt: Receipt,
}

/// A broker entry that is not a usable job. The runtime reports it (an `error` event when the
/// job id is known) and dead-letters it with `reason`.
#[derive(Debug, Clone, PartialEq)]
pub struct Malformed {
    pub receipt: Receipt,
    /// The entry's job id when it had a valid one.
    pub job_id: Option<JobId>,
    /// Why the entry was rejected, in words fit for the dead-letter queue.
    pub reason: String,
    /// The broker's delivery count for this entry (counting from 1).
    pub attempt: u32,
}

/// What `JobSource::next` yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Job(Delivery),
    Malformed(Malformed),
}

impl Incoming {
    pub fn receipt(&self) -> &Receipt {
        match self {
            Incoming::Job(d) => &d.receipt,
            Incoming::Malformed(m) => &m.receipt,
        }
    }

    /// The job id, when the entry carried a valid one.
    pub fn job_id(&self) -> Option<&JobId> {
        match self {
            Incoming::Job(d) => Some(&d.job.id),
            Incoming::Malformed(m) => m.job_id.as_ref(),
        }
    }

    /// The attempt this delivery is (the broker's delivery count).
    pub fn attempt(&self) -> u32 {
        match self {
            Incoming::Job(d) => d.job.attempt,
            Incoming::Malformed(m) => m.attempt,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_round_trip_and_display() {
        let r = Receipt::new("jobs:v1:gpu-general", "1-0");
        assert_eq!(r.to_string(), "jobs:v1:gpu-general/1-0");
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Receipt>(&json).unwrap(), r);
    }
}
