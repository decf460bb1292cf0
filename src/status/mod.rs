//! The node's status: one [`NodeStatus`] holds what a running worker knows about itself (the
//! transport, the runner's counters, the platform detection) and builds from it the status
//! message of docs/wire-format.md#heartbeat, which the heartbeat sends ([`heartbeat`]), the status server serves as
//! `/status` and renders as `/metrics` ([`server`], [`prometheus`]). This module reads state; it
//! must never change the runner or the transport.

pub mod heartbeat;
pub mod mesh;
pub mod prometheus;
pub mod server;

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use citadel_transports::JobSource;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::platform::Platform;
use crate::runner::Counters;

/// The version of the status message's layout (bumped when a field changes meaning).
pub const MESSAGE_VERSION: &str = "1.0";
/// Platform detection is reused for this long (GPU utilisation and load change slowly).
const PLATFORM_TTL: Duration = Duration::from_secs(5);
/// The services' compose state is reused for this long.
const SERVICES_TTL: Duration = Duration::from_secs(15);
/// How long a readiness probe waits for the transport's health check.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// What routing derived (docs/transports.md#routing): the capability tags and the streams the
/// node reads, with their priorities; updated by the probe loop of `citadel work`.
#[derive(Debug, Default, Clone)]
pub struct RoutingView {
    pub tags: Vec<String>,
    pub streams: Vec<(String, u8)>,
}

/// The shared, live [`RoutingView`].
pub type SharedRouting = Arc<std::sync::Mutex<RoutingView>>;

/// Who this worker is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub node_id: String,
    pub node_name: String,
    pub worker_id: String,
    pub concurrency: usize,
    pub data_dir: PathBuf,
    /// The manifest whose `services` the status reports (compose state and readiness).
    pub manifest: PathBuf,
    /// The port of the node's terminal service (on loopback and on the mesh); `None`: off.
    pub terminal_port: Option<u16>,
}

/// What a running worker knows about itself.
#[derive(Debug)]
pub struct NodeStatus {
    pub identity: Identity,
    source: Arc<dyn JobSource>,
    counters: Arc<Counters>,
    started: SystemTime,
    platform: Mutex<Option<(Instant, Arc<Platform>)>>,
    services: Mutex<Option<(Instant, Value)>>,
    routing: Option<SharedRouting>,
}

impl NodeStatus {
    pub fn new(identity: Identity, source: Arc<dyn JobSource>, counters: Arc<Counters>) -> Self {
        Self {
            identity,
            source,
            counters,
            started: SystemTime::now(),
            platform: Mutex::new(None),
            services: Mutex::new(None),
            routing: None,
        }
    }

    /// Reports the streams routing derived (a worker with explicit streams has none).
    pub fn with_routing(mut self, routing: Option<SharedRouting>) -> Self {
        self.routing = routing;
        self
    }

    /// The routing now, when the streams are derived.
    pub fn routing(&self) -> Option<RoutingView> {
        let r = self.routing.as_ref()?;
        Some(
            r.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }

    fn routing_json(&self) -> Value {
        let Some(r) = self.routing() else {
            return Value::Null;
        };
        let streams: Vec<Value> = r
            .streams
            .iter()
            .map(|(s, p)| json!({"stream": s, "priority": p}))
            .collect();
        json!({"tags": r.tags, "streams": streams})
    }

    /// The manifest's services with their compose state and readiness, asked at most every
    /// [`SERVICES_TTL`] (a compose query takes about a second). A manifest without services
    /// costs nothing; a failed query is reported in place of the list.
    pub async fn services(&self) -> Value {
        let mut cached = self.services.lock().await;
        if let Some((at, v)) = cached.as_ref() {
            if at.elapsed() < SERVICES_TTL {
                return v.clone();
            }
        }
        let id = &self.identity;
        let v = match crate::services::status(&id.data_dir, &id.manifest).await {
            Ok(list) => serde_json::to_value(list).unwrap_or_else(|_| json!([])),
            Err(e) => json!([{"error": format!("{e:#}")}]),
        };
        *cached = Some((Instant::now(), v.clone()));
        v
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn source(&self) -> &dyn JobSource {
        self.source.as_ref()
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }

    /// The platform, detected at most every [`PLATFORM_TTL`].
    pub async fn platform(&self) -> Arc<Platform> {
        let mut cached = self.platform.lock().await;
        if let Some((at, p)) = cached.as_ref() {
            if at.elapsed() < PLATFORM_TTL {
                return p.clone();
            }
        }
        let p = Arc::new(crate::platform::detect(&self.identity.data_dir).await);
        *cached = Some((Instant::now(), p.clone()));
        p
    }

    /// Ready: the transport answers its health check and the worker is taking jobs. Returns the
    /// reasons when it is not.
    pub async fn readiness(&self) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if let Some(failure) = self.journal_failure() {
            why.push(failure);
        }
        if !self.counters.consuming.load(Ordering::Relaxed) {
            why.push("the worker is not consuming jobs".to_string());
        }
        match tokio::time::timeout(HEALTH_TIMEOUT, self.source.health()).await {
            Ok(h) if h.healthy => {}
            Ok(h) => why.push(format!(
                "transport {} is unhealthy: {}",
                self.source.name(),
                h.detail.unwrap_or_default()
            )),
            Err(_) => why.push(format!(
                "transport {} health check timed out",
                self.source.name()
            )),
        }
        if why.is_empty() {
            Ok(())
        } else {
            Err(why)
        }
    }

    /// Why the journal cannot be written, once that happened (the worker is stopping).
    fn journal_failure(&self) -> Option<String> {
        self.counters
            .journal_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The status message (docs/wire-format.md#heartbeat).
    pub async fn message(&self) -> Value {
        let platform = self.platform().await;
        let c = &self.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (succeeded, failed, cancelled) =
            (load(&c.succeeded), load(&c.failed), load(&c.cancelled));
        let route = self.source.route();
        let id = &self.identity;
        let p = platform.as_ref();
        json!({
            "version": MESSAGE_VERSION,
            "timestamp": citadel_transports::events::rfc3339(SystemTime::now()),
            "nodeId": id.node_id,
            "node": {
                "id": id.node_id,
                "name": id.node_name,
                "worker_id": id.worker_id,
                "agent_version": env!("CARGO_PKG_VERSION"),
                "started_at": citadel_transports::events::rfc3339(self.started),
                "uptime_s": self.uptime().as_secs(),
            },
            "system": {
                "os": p.os,
                "hostname": p.system.hostname,
                "cpu_count": p.system.cpu_count,
                "cpu_model": p.system.cpu_model,
                "load": p.system.load,
                "memory_total_bytes": p.system.memory_total_bytes,
                "memory_available_bytes": p.system.memory_available_bytes,
                "uptime_s": p.system.uptime_s,
                "disk": p.system.disk,
                "package_manager": p.package_manager,
                "docker": p.docker,
                "gpu_driver": p.gpu.driver,
                "cuda": p.gpu.cuda,
                "gpu_error": p.gpu.error,
            },
            "gpu": p.gpu.gpus,
            "services": self.services().await,
            "terminal": id.terminal_port.map(|port| json!({ "port": port })),
            "capabilities": {
                "gpus": p.gpu.gpus.len(),
                "engines": p.engines,
                "tags": p.tags,
            },
            "worker": {
                "consuming": c.consuming.load(Ordering::Relaxed),
                "concurrency": id.concurrency,
                "in_flight": load(&c.in_flight),
                "received": load(&c.received),
                "processed": succeeded + failed + cancelled,
                "succeeded": succeeded,
                "failed": failed,
                "cancelled": cancelled,
                "retried": load(&c.retried),
                "dead_lettered": load(&c.dead_lettered),
                "deduplicated": load(&c.deduplicated),
                "released": load(&c.released),
                "journal_failure": self.journal_failure(),
            },
            "routing": self.routing_json(),
            "transport": {
                "active": route.active,
                "switches": route.switches,
                "last_switch": route.last_switch,
            },
        })
    }
}
