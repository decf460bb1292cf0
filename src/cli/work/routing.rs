//! `citadel work`'s side of capability routing (docs/transports.md#routing): resolves the
//! `routing.*` settings, detects the capabilities (the GPUs once; the configured engines and the
//! models they serve every probe interval) and publishes the derived stream set, which the
//! transports' fetchers follow (`RouteFeed`), and which the status reports. The decision itself
//! is `citadel_transports::routing::routes`. This module owns the probe loop; it must never claim
//! or run a job.

use std::sync::{Arc, Mutex, PoisonError};

use crate::status::{RoutingView, SharedRouting};
use std::time::Duration;

use anyhow::Context as _;
use citadel_transports::routing::{self, Base, Capabilities, Route, RouteFeed, RoutingConfig};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{duration, WorkArgs};
use crate::config::{self, FileConfig};
use crate::handlers::llm::Backend;
use crate::handlers::LlmConfig;
use crate::platform::{self, GpuReport, OsInfo};

/// How long one engine probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// The routing settings and what the probes need.
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub cfg: RoutingConfig,
    pub every: Duration,
    engines: Vec<(Backend, String)>,
}

impl Settings {
    pub fn resolve(
        args: &WorkArgs,
        file: &FileConfig,
        node_name: &str,
        llm: &LlmConfig,
    ) -> anyhow::Result<Self> {
        let r = &file.routing;
        let mut cfg = RoutingConfig::new(node_name);
        let base = args.routing_base.as_ref().or(r.base.as_ref());
        let base = base.map_or(config::default_of("routing.base"), String::as_str);
        cfg.base = base
            .parse::<Base>()
            .map_err(anyhow::Error::msg)
            .context("setting `routing.base`")?;
        cfg.org = args.org.clone().or(r.org.clone()).filter(|o| !o.is_empty());
        if let Some(c) = &r.categories {
            cfg.categories = c.clone();
        }
        cfg.manual_tags = file.node.tags.clone().unwrap_or_default();
        for t in &cfg.manual_tags {
            if !routing::valid_tag(t) {
                anyhow::bail!(
                    "node.tags: {t:?} is not a routing tag (lower case letters, digits and \
                     `:._-`, starting with a letter or digit, at most {} characters)",
                    routing::MAX_TAG_LEN
                );
            }
        }
        let every = duration(
            "routing.probe_interval",
            args.routing_probe_interval.as_ref(),
            r.probe_interval.as_ref(),
            crate::format::parse_duration(config::default_of("routing.probe_interval"))?,
        )?;
        if every.is_zero() {
            anyhow::bail!("setting `routing.probe_interval` must be more than 0");
        }
        let engines = Backend::ALL
            .iter()
            .map(|b| (*b, llm.url(*b).to_owned()))
            .collect();
        Ok(Self {
            cfg,
            every,
            engines,
        })
    }
}

/// The live stream set: the feed for the fetchers, the state for the status, the probe loop.
#[derive(Debug)]
pub(super) struct Live {
    pub feed: RouteFeed,
    pub state: SharedRouting,
    pub task: JoinHandle<()>,
}

/// Detects the capabilities once, publishes the first set, then probes every interval.
pub(super) async fn start(settings: Settings) -> Live {
    let (gpu, os) = tokio::task::spawn_blocking(|| (platform::gpu::detect(), OsInfo::detect()))
        .await
        .unwrap_or_else(|e| {
            let report = GpuReport {
                driver: None,
                cuda: None,
                gpus: Vec::new(),
                error: Some(format!("GPU detection failed: {e}")),
            };
            (report, OsInfo::detect())
        });
    let client = crate::handlers::http_client(PROBE_TIMEOUT).ok();
    let caps = capabilities(&gpu, &os, client.as_ref(), &settings.engines).await;
    let first = redis_set(&routing::routes(&caps, &settings.cfg));
    let tags = routing::routing_tags(&caps, &settings.cfg);
    tracing::info!(tags = ?tags, streams = ?first, "routing: the job streams derived from this node's capabilities");
    let (tx, rx) = watch::channel(first.clone());
    let state = Arc::new(Mutex::new(RoutingView {
        tags,
        streams: first,
    }));
    let task = tokio::spawn(probe_loop(settings, gpu, os, client, tx, state.clone()));
    Live {
        feed: RouteFeed::new(rx),
        state,
        task,
    }
}

async fn probe_loop(
    settings: Settings,
    gpu: GpuReport,
    os: OsInfo,
    client: Option<reqwest::Client>,
    tx: watch::Sender<Vec<(String, u8)>>,
    state: SharedRouting,
) {
    let mut tick = tokio::time::interval(settings.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let caps = capabilities(&gpu, &os, client.as_ref(), &settings.engines).await;
        let set = redis_set(&routing::routes(&caps, &settings.cfg));
        let tags = routing::routing_tags(&caps, &settings.cfg);
        let changed = tx.send_if_modified(|old| {
            let changed = *old != set;
            if changed {
                *old = set.clone();
            }
            changed
        });
        if changed {
            tracing::info!(tags = ?tags, streams = ?set, "routing: capabilities changed; the job streams follow");
        }
        *state.lock().unwrap_or_else(PoisonError::into_inner) = RoutingView { tags, streams: set };
    }
}

/// The routes as Redis streams with their priorities.
fn redis_set(routes: &[Route]) -> Vec<(String, u8)> {
    routes.iter().map(|r| (r.stream(), r.priority)).collect()
}

/// The GPUs' and the OS's tags, and those of every engine that answers with its model list.
async fn capabilities(
    gpu: &GpuReport,
    os: &OsInfo,
    client: Option<&reqwest::Client>,
    engines: &[(Backend, String)],
) -> Capabilities {
    let mut tags = platform::tags(os, gpu, &[]);
    if let Some(client) = client {
        let probes = engines.iter().map(|(b, url)| models(client, *b, url));
        for ((b, _), found) in engines
            .iter()
            .zip(futures_util::future::join_all(probes).await)
        {
            let Some(models) = found else { continue };
            tags.push(format!("engine:{}", b.name()));
            tags.extend(models.iter().map(|m| format!("model:{}", model_slug(m))));
        }
    }
    tags.sort();
    tags.dedup();
    Capabilities {
        has_gpu: !gpu.gpus.is_empty(),
        tags,
    }
}

/// The models an engine serves, when it answers its model list (OpenAI `/v1/models`, Ollama
/// `/api/tags`); `None` when it does not (not running, loading).
async fn models(client: &reqwest::Client, backend: Backend, base: &str) -> Option<Vec<String>> {
    let (path, list, key) = match backend {
        Backend::Ollama => ("/api/tags", "models", "name"),
        _ => ("/v1/models", "data", "id"),
    };
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let resp = tokio::time::timeout(PROBE_TIMEOUT, client.get(url).send())
        .await
        .ok()?
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body: Value = tokio::time::timeout(PROBE_TIMEOUT, resp.json())
        .await
        .ok()?
        .ok()?;
    let names = body[list].as_array()?;
    Some(
        names
            .iter()
            .filter_map(|m| m[key].as_str().map(str::to_owned))
            .collect(),
    )
}

/// A model name as a tag value: lower case, anything but letters, digits, `.`, `_` and `-`
/// turned into `-` (`meta-llama/Llama-3.1-8B` → `meta-llama-llama-3.1-8b`, `tiny:latest` →
/// `tiny-latest`).
pub fn model_slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    s.chars()
        .take(routing::MAX_TAG_LEN - "model:".len())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_become_tags() {
        assert_eq!(
            model_slug("meta-llama/Llama-3.1-8B-Instruct"),
            "meta-llama-llama-3.1-8b-instruct"
        );
        assert_eq!(model_slug("tiny:latest"), "tiny-latest");
        let long = "x".repeat(300);
        assert!(routing::valid_tag(&format!("model:{}", model_slug(&long))));
    }
}
