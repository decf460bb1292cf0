//! The settlement vocabulary: the four ways a worker can finish with a delivery. Every transport
//! implements all four; the runtime journals the settlement before it sends it.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a worker tells the transport about a delivery once it is done with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Settlement {
    /// The job is finished (succeeded, or failed for good and reported): remove it.
    Ack,
    /// Deliver it again after `delay`; this counts as an attempt.
    Retry {
        #[serde(with = "millis")]
        delay: Duration,
    },
    /// Give up on it: move it to the dead-letter queue with `reason`.
    DeadLetter { reason: String },
    /// Give unstarted work back (at shutdown) without counting an attempt.
    Release,
}

impl Settlement {
    /// The name used in logs, the journal and the CLI.
    pub fn name(&self) -> &'static str {
        match self {
            Settlement::Ack => "ack",
            Settlement::Retry { .. } => "retry",
            Settlement::DeadLetter { .. } => "dead_letter",
            Settlement::Release => "release",
        }
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settlements_serialize_with_their_kind() {
        let s = Settlement::Retry {
            delay: Duration::from_millis(1500),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"kind":"retry","delay":1500}"#);
        assert_eq!(serde_json::from_str::<Settlement>(&json).unwrap(), s);
        assert_eq!(Settlement::Release.name(), "release");
    }
}
