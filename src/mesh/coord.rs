//! The node's coordination with the control plane (docs/mesh.md#coordination): it registers the
//! node's public key with the node's own credential (`POST /api/fabric/mesh/register`), then
//! follows its organization's network map by long-poll (`GET /api/fabric/mesh/map?since=V`),
//! published on a `watch` channel. A plane that is away is retried with the one backoff policy
//! ([`Backoff::RECONNECT`]); a refusal (a bad or revoked credential, a key another node holds)
//! ends it with the plane's reason; a plane that forgot the key is registered with again. It
//! must never log the credential.

use std::fmt;
use std::time::Duration;

use citadel_transports::control_plane::mesh_wire::{
    MeshKey, NetworkMap, RegisterRequest, Registration,
};
use citadel_transports::Backoff;
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long the plane holds a map request at most (its own cap is the same).
pub const MAP_WAIT: Duration = Duration::from_secs(25);

/// Why a call to the plane failed.
#[derive(Debug, thiserror::Error)]
pub enum CoordError {
    /// A refusal that retrying does not change (400, 401, 403, 404, 409).
    #[error("the control plane refused ({status}): {message}")]
    Refused { status: u16, message: String },
    /// The plane is away or failing: worth retrying.
    #[error("the control plane is unavailable: {0}")]
    Unavailable(String),
}

/// A node's client of the plane's mesh coordination.
#[derive(Clone)]
pub struct Coordinator {
    http: reqwest::Client,
    plane: String,
    token: String,
    key: MeshKey,
}

impl fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coordinator")
            .field("plane", &self.plane)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// A registered node following its map.
#[derive(Debug)]
pub struct Watching {
    pub registration: Registration,
    /// The latest map; it changes when the plane's does.
    pub map: watch::Receiver<NetworkMap>,
    /// Follows the map until every receiver is dropped (`Ok`) or the plane refuses the node.
    pub task: JoinHandle<Result<(), CoordError>>,
}

impl Coordinator {
    /// A client of the plane at `plane` (http or https) for the node with credential `token`
    /// and public key `key`.
    pub fn new(plane: &str, token: &str, key: MeshKey) -> anyhow::Result<Self> {
        let http = citadel_transports::http::build_client(|| {
            reqwest::Client::builder().connect_timeout(Duration::from_secs(5))
        })?;
        Ok(Self {
            http,
            plane: plane.trim_end_matches('/').to_string(),
            token: token.to_string(),
            key,
        })
    }

    async fn answer<T: DeserializeOwned>(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, CoordError> {
        let unavailable = |e: reqwest::Error| CoordError::Unavailable(format!("{e:#}"));
        let resp = rb
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(unavailable)?;
        let status = resp.status();
        let text = resp.text().await.map_err(unavailable)?;
        if status.is_success() {
            return serde_json::from_str(&text)
                .map_err(|e| CoordError::Unavailable(format!("unreadable answer: {e}")));
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or(text);
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(CoordError::Unavailable(format!("{status}: {message}")));
        }
        Err(CoordError::Refused {
            status: status.as_u16(),
            message,
        })
    }

    /// Registers the node's key once: its address.
    pub async fn register(&self) -> Result<Registration, CoordError> {
        let rb = self
            .http
            .post(format!("{}/api/fabric/mesh/register", self.plane))
            .timeout(Duration::from_secs(30))
            .json(&RegisterRequest {
                public_key: self.key,
            });
        self.answer(rb).await
    }

    /// The node's map: at once when its version is not `since`, else when it changes or after
    /// `wait` (at most [`MAP_WAIT`]).
    pub async fn map(&self, since: Option<u64>, wait: Duration) -> Result<NetworkMap, CoordError> {
        let wait = wait.min(MAP_WAIT);
        let mut url = format!(
            "{}/api/fabric/mesh/map?wait={:.3}",
            self.plane,
            wait.as_secs_f64()
        );
        if let Some(v) = since {
            url.push_str(&format!("&since={v}"));
        }
        let rb = self.http.get(url).timeout(wait + Duration::from_secs(15));
        self.answer(rb).await
    }

    /// Registers (retrying while the plane is away), reads the first map and follows it.
    pub async fn start(self) -> Result<Watching, CoordError> {
        let registration = retrying(|| self.register()).await?;
        let first = retrying(|| self.map(None, Duration::ZERO)).await?;
        tracing::info!(mesh_ip = %registration.mesh_ip, peers = first.peers.len(), "mesh key registered");
        let (tx, map) = watch::channel(first);
        let task = tokio::spawn(self.follow(tx));
        Ok(Watching {
            registration,
            map,
            task,
        })
    }

    /// Long-polls the map into `tx` until every receiver is gone or the plane refuses the node.
    async fn follow(self, tx: watch::Sender<NetworkMap>) -> Result<(), CoordError> {
        let mut retrier = Backoff::RECONNECT.retrier();
        loop {
            let since = tx.borrow().version;
            let got = tokio::select! {
                got = self.map(Some(since), MAP_WAIT) => got,
                () = tx.closed() => return Ok(()),
            };
            let err = match got {
                Ok(map) => {
                    retrier.reset();
                    tx.send_if_modified(|m| {
                        let changed = *m != map;
                        *m = map;
                        changed
                    });
                    continue;
                }
                // The plane lost the key (a restored store): register it again.
                Err(CoordError::Refused { status: 404, .. }) => match self.register().await {
                    Ok(_) => continue,
                    Err(e) => e,
                },
                Err(e) => e,
            };
            if let CoordError::Refused { .. } = err {
                tracing::error!(error = %err, "the control plane refused this node's mesh coordination");
                return Err(err);
            }
            let delay = retrier.next_delay();
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "following the mesh map");
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    }
}

/// Runs `call` until it succeeds or is refused, backing off while the plane is away.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, CoordError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, CoordError>>,
{
    let mut retrier = Backoff::RECONNECT.retrier();
    loop {
        match call().await {
            Err(CoordError::Unavailable(e)) => {
                let delay = retrier.next_delay();
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "the control plane is away; retrying");
                tokio::time::sleep(delay).await;
            }
            other => return other,
        }
    }
}
