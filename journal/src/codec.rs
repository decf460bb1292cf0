//! The encoding of one event: a format-version byte followed by the event in MessagePack
//! (rmp-serde, named fields). Events are stored in blocks ([`crate::block`]). Nothing here touches
//! the store; decoding never panics on bad bytes.

use crate::event::JobEvent;

/// The format version written in front of every event. Bump it on any change to [`JobEvent`]'s
/// encoding and keep a decoder for the old one.
pub const FORMAT_VERSION: u8 = 1;

/// Why stored bytes are not an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("empty value")]
    Empty,
    #[error("unknown format version {0} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion(u8),
    #[error("undecodable event: {0}")]
    Malformed(String),
}

pub fn encode(event: &JobEvent) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_VERSION);
    // Writing into a Vec cannot fail and every field is serializable.
    rmp_serde::encode::write_named(&mut out, event).expect("a JobEvent always encodes");
    out
}

pub fn decode(bytes: &[u8]) -> Result<JobEvent, DecodeError> {
    match bytes.split_first() {
        None => Err(DecodeError::Empty),
        Some((&FORMAT_VERSION, body)) => {
            rmp_serde::from_slice(body).map_err(|e| DecodeError::Malformed(e.to_string()))
        }
        Some((&v, _)) => Err(DecodeError::UnknownVersion(v)),
    }
}

#[cfg(test)]
mod tests {
    use citadel_transports::{Job, JobId};
    use proptest::prelude::*;

    use super::*;
    use crate::event::EventKind;

    fn sample() -> JobEvent {
        JobEvent {
            seq: 42,
            at_ms: 1_700_000_000_000,
            job_id: JobId::new("job-1").unwrap(),
            transport: "redis".into(),
            delivery_id: Some("1-0".into()),
            event: EventKind::Received {
                job: Job {
                    id: JobId::new("job-1").unwrap(),
                    job_type: "echo".into(),
                    payload: serde_json::json!({"a": [1, 2.5, "x", null, true], "n": -3}),
                    ray_id: Some("ray".into()),
                    enqueued_at: None,
                    attempt: 1,
                    source: "redis:jobs:v1:gpu-general".into(),
                },
            },
        }
    }

    #[test]
    fn events_round_trip() {
        let ev = sample();
        assert_eq!(decode(&encode(&ev)).unwrap(), ev);
    }

    #[test]
    fn bad_bytes_are_reported() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(&[9, 1, 2]), Err(DecodeError::UnknownVersion(9)));
        let mut truncated = encode(&sample());
        truncated.truncate(truncated.len() / 2);
        assert!(matches!(decode(&truncated), Err(DecodeError::Malformed(_))));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_corrupted_events_never_panics(flip in 0usize..200, bit in 0u8..8) {
            let mut bytes = encode(&sample());
            let i = flip % bytes.len();
            bytes[i] ^= 1 << bit;
            let _ = decode(&bytes);
        }
    }
}
