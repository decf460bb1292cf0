//! The one list of citadel's transports: each one's name, its rank for `auto` (best first:
//! redis > nats > websocket > nexus), what `--help` says of it, how to connect its [`JobSource`]
//! from its settings ([`TransportConfig`]), how to describe those settings at start-up and how to
//! make its producer. Adding a transport is one variant here (docs/adding-a-transport.md). This
//! module must never choose between transports (`auto` and `citadel work` do) nor hold a
//! connection itself.

use std::sync::Arc;

use crate::auto::TransportCandidate;
use crate::nats::{NatsConfig, NatsProducer, NatsSource};
use crate::nexus::{NexusConfig, NexusSource};
use crate::redis::{RedisConfig, RedisProducer, RedisSource};
use crate::source::{JobSource, SourceError};
use crate::websocket::{WebSocketConfig, WebSocketSource};

/// A transport's name, in `auto`'s order of preference (the derived `Ord` is the rank).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TransportName {
    Redis,
    Nats,
    WebSocket,
    Nexus,
}

impl TransportName {
    /// Every transport, best first.
    pub const ALL: [TransportName; 4] = [Self::Redis, Self::Nats, Self::WebSocket, Self::Nexus];

    /// The name on the command line, in the config file and in `auto`'s receipts.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::WebSocket => "websocket",
            Self::Nexus => "nexus",
        }
    }

    /// The transport called `name`, if there is one.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|n| n.as_str() == name)
    }

    /// What `citadel work --help` says of it.
    pub fn help(self) -> &'static str {
        match self {
            Self::Redis => "Redis Streams consumer group (the production path)",
            Self::Nats => "NATS JetStream durable pull consumer (`--nats-url`)",
            Self::WebSocket => {
                "Jobs pushed by a citadel control plane over one WebSocket (`--nexus-url` or \
                 `--ws-url`): for nodes behind proxies that allow one outbound HTTP(S) connection \
                 and nothing else"
            }
            Self::Nexus => {
                "HTTP polling of a Nexus control plane (`--nexus-url`), long-poll and leases when \
                 it is a citadel control plane"
            }
        }
    }

    /// What a connection error names (`cannot reach {peer}; retrying`).
    pub fn peer(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Nats => "nats",
            Self::WebSocket => "the control plane WebSocket",
            Self::Nexus => "the control plane",
        }
    }
}

impl std::fmt::Display for TransportName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One transport's settings: everything needed to connect its source.
#[derive(Debug, Clone)]
pub enum TransportConfig {
    Redis(RedisConfig),
    Nats(NatsConfig),
    WebSocket(WebSocketConfig),
    Nexus(NexusConfig),
}

/// What the start-up line says of a transport's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Description {
    /// What this node is to the transport: `consumer` (of a group) or `worker`.
    pub role: &'static str,
    /// The server's URL, as configured (redact it before printing).
    pub url: String,
    /// The rest, e.g. ` streams jobs:v1:gpu-general group workers` (empty, or starting with a
    /// space).
    pub detail: String,
}

/// A transport's producer: what enqueues jobs on it.
#[derive(Debug, Clone)]
pub enum TransportProducer {
    Redis(RedisProducer),
    Nats(Box<NatsProducer>),
    /// Nexus and websocket take jobs from a control plane, whose producer is its HTTP API
    /// (`POST /api/v1/jobs`, what `citadel submit` calls without `--redis-url`/`--nats-url`).
    ControlPlane {
        url: String,
    },
}

impl TransportConfig {
    pub fn name(&self) -> TransportName {
        match self {
            Self::Redis(_) => TransportName::Redis,
            Self::Nats(_) => TransportName::Nats,
            Self::WebSocket(_) => TransportName::WebSocket,
            Self::Nexus(_) => TransportName::Nexus,
        }
    }

    /// Connects its source (once; see [`TransportCandidate`] for retrying in the background).
    pub async fn connect(&self) -> Result<Arc<dyn JobSource>, SourceError> {
        Ok(match self {
            Self::Redis(c) => Arc::new(RedisSource::connect(c.clone()).await?),
            Self::Nats(c) => Arc::new(NatsSource::connect(c.clone()).await?),
            Self::WebSocket(c) => Arc::new(WebSocketSource::connect(c.clone()).await?),
            Self::Nexus(c) => Arc::new(NexusSource::connect(c.clone()).await?),
        })
    }

    /// Makes its producer (connecting to the server where the producer needs a connection).
    pub async fn producer(&self) -> Result<TransportProducer, SourceError> {
        Ok(match self {
            Self::Redis(c) => TransportProducer::Redis(RedisProducer::connect(&c.url).await?),
            Self::Nats(c) => TransportProducer::Nats(Box::new(NatsProducer::connect(c).await?)),
            Self::WebSocket(_) | Self::Nexus(_) => TransportProducer::ControlPlane {
                url: self.url().to_owned(),
            },
        })
    }

    /// The server's URL.
    pub fn url(&self) -> &str {
        match self {
            Self::Redis(c) => &c.url,
            Self::Nats(c) => &c.url,
            Self::WebSocket(c) => &c.url,
            Self::Nexus(c) => &c.url,
        }
    }

    /// What the start-up line says of these settings.
    pub fn describe(&self) -> Description {
        let (role, detail) = match self {
            Self::Redis(c) => (
                "consumer",
                format!(" streams {} group {}", c.streams.join(","), c.group),
            ),
            Self::Nats(c) => (
                "worker",
                format!(
                    " stream {} subjects {} consumer {}",
                    c.stream,
                    c.subjects.join(","),
                    c.consumer
                ),
            ),
            Self::WebSocket(_) | Self::Nexus(_) => ("worker", String::new()),
        };
        Description {
            role,
            url: self.url().to_owned(),
            detail,
        }
    }

    /// This transport as one of `auto`'s candidates.
    pub fn candidate(self) -> TransportCandidate {
        let name = self.name().as_str();
        let cfg = Arc::new(self);
        TransportCandidate::new(name, move || {
            let cfg = cfg.clone();
            async move { cfg.connect().await }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_in_rank_order() {
        let names: Vec<_> = TransportName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(names, ["redis", "nats", "websocket", "nexus"]);
        for n in TransportName::ALL {
            assert_eq!(TransportName::parse(n.as_str()), Some(n));
        }
        assert_eq!(TransportName::parse("auto"), None);
        let mut sorted = TransportName::ALL;
        sorted.sort();
        assert_eq!(sorted, TransportName::ALL);
    }

    #[test]
    fn configs_describe_themselves() {
        let mut r = RedisConfig::new("redis://127.0.0.1:6379", "c-1");
        r.streams = vec!["a".into(), "b".into()];
        let d = TransportConfig::Redis(r).describe();
        assert_eq!(d.role, "consumer");
        assert_eq!(d.detail, " streams a,b group workers");
        let n = TransportConfig::Nexus(NexusConfig::new("http://127.0.0.1:1", "w"));
        assert_eq!(n.name(), TransportName::Nexus);
        assert_eq!(n.describe().url, "http://127.0.0.1:1");
    }
}
