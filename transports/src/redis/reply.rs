//! Decoding of raw Redis replies for the stream commands this transport sends (`XREADGROUP`,
//! `XCLAIM`, `XPENDING`). Pure code over `redis::Value`: it must never do I/O, and an unexpected
//! shape is an error, never a panic.

use redis::Value;

use crate::source::SourceError;

/// One stream entry; `fields` is `None` when the entry was deleted from the stream while still
/// pending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub id: String,
    pub fields: Option<Vec<(String, Vec<u8>)>>,
}

/// One line of the extended form of `XPENDING`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInfo {
    pub id: String,
    pub consumer: String,
    pub idle_ms: u64,
    pub deliveries: u32,
}

fn unexpected(what: &str, v: &Value) -> SourceError {
    SourceError::Broker(format!("unexpected {what} reply: {v:?}"))
}

pub fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => text(other)?.parse().ok(),
    }
}

fn items(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Array(a) | Value::Set(a) => Some(a),
        _ => None,
    }
}

/// `[id, [field, value, ...] | nil]`.
pub fn entry(v: &Value) -> Result<RawEntry, SourceError> {
    let parts = items(v).ok_or_else(|| unexpected("entry", v))?;
    let [id, fields] = parts else {
        return Err(unexpected("entry", v));
    };
    let id = text(id).ok_or_else(|| unexpected("entry id", v))?;
    let fields = match fields {
        Value::Nil => None,
        Value::Map(pairs) => Some(
            pairs
                .iter()
                .map(|(k, v)| Ok((text(k).unwrap_or_default(), bytes(v)?)))
                .collect::<Result<_, SourceError>>()?,
        ),
        other => {
            let flat = items(other).ok_or_else(|| unexpected("entry fields", v))?;
            flat.chunks(2)
                .map(|kv| match kv {
                    [k, v] => Ok((text(k).unwrap_or_default(), bytes(v)?)),
                    _ => Err(unexpected("entry fields", other)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some)?
        }
    };
    Ok(RawEntry { id, fields })
}

fn bytes(v: &Value) -> Result<Vec<u8>, SourceError> {
    match v {
        Value::BulkString(b) => Ok(b.clone()),
        other => text(other)
            .map(String::into_bytes)
            .ok_or_else(|| unexpected("field value", other)),
    }
}

/// A list of entries (`XCLAIM`, `XRANGE`).
pub fn entries(v: &Value) -> Result<Vec<RawEntry>, SourceError> {
    match v {
        Value::Nil => Ok(Vec::new()),
        other => items(other)
            .ok_or_else(|| unexpected("entries", other))?
            .iter()
            .map(entry)
            .collect(),
    }
}

/// An `XREAD`/`XREADGROUP` reply: nil on timeout, else the entries of each stream.
pub fn read(v: &Value) -> Result<Vec<(String, Vec<RawEntry>)>, SourceError> {
    let per_stream = |key: &Value, list: &Value| -> Result<(String, Vec<RawEntry>), SourceError> {
        let key = text(key).ok_or_else(|| unexpected("stream key", key))?;
        Ok((key, entries(list)?))
    };
    match v {
        Value::Nil => Ok(Vec::new()),
        Value::Map(pairs) => pairs.iter().map(|(k, l)| per_stream(k, l)).collect(),
        other => items(other)
            .ok_or_else(|| unexpected("read", other))?
            .iter()
            .map(|s| match items(s) {
                Some([k, l]) => per_stream(k, l),
                _ => Err(unexpected("read", s)),
            })
            .collect(),
    }
}

/// The extended form of `XPENDING` (`XPENDING key group [IDLE ms] start end count`).
pub fn pending(v: &Value) -> Result<Vec<PendingInfo>, SourceError> {
    items(v)
        .ok_or_else(|| unexpected("XPENDING", v))?
        .iter()
        .map(|line| match items(line) {
            Some([id, consumer, idle, count]) => Ok(PendingInfo {
                id: text(id).ok_or_else(|| unexpected("XPENDING id", line))?,
                consumer: text(consumer).ok_or_else(|| unexpected("XPENDING consumer", line))?,
                idle_ms: int(idle).and_then(|i| u64::try_from(i).ok()).unwrap_or(0),
                deliveries: int(count).and_then(|i| u32::try_from(i).ok()).unwrap_or(1),
            }),
            _ => Err(unexpected("XPENDING", line)),
        })
        .collect()
}

/// The integer status the settle and lease scripts return.
pub fn status(v: &Value) -> Result<i64, SourceError> {
    int(v).ok_or_else(|| unexpected("script", v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn decodes_a_read_reply() {
        let v = Value::Array(vec![Value::Array(vec![
            b("jobs:v1:x"),
            Value::Array(vec![
                Value::Array(vec![b("1-0"), Value::Array(vec![b("jobId"), b("j")])]),
                Value::Array(vec![b("2-0"), Value::Nil]),
            ]),
        ])]);
        let r = read(&v).unwrap();
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].0, "jobs:v1:x");
        assert_eq!(
            r[0].1[0].fields.as_deref(),
            Some(&[("jobId".to_owned(), b"j".to_vec())][..])
        );
        assert_eq!(r[0].1[1].fields, None);
        assert!(read(&Value::Nil).unwrap().is_empty());
        assert!(read(&Value::Int(3)).is_err());
    }

    #[test]
    fn decodes_pending_lines() {
        let v = Value::Array(vec![Value::Array(vec![
            b("1-0"),
            b("c1"),
            Value::Int(1500),
            Value::Int(3),
        ])]);
        assert_eq!(
            pending(&v).unwrap(),
            vec![PendingInfo {
                id: "1-0".into(),
                consumer: "c1".into(),
                idle_ms: 1500,
                deliveries: 3
            }]
        );
        assert!(pending(&Value::Array(vec![Value::Int(1)])).is_err());
    }
}
