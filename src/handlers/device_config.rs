//! `APPLY_DEVICE_CONFIG`: the platform's onboarding wizard configures the node (name, tags,
//! services, SSH, monitoring). The handler validates the payload, applies it to the manifest
//! (one atomic write; sections it does not own are kept), converges the services through compose
//! when they changed, and returns what changed (`changes`: path, before, after). Applying the same
//! config twice changes nothing, so a retry after a failed converge is safe. It never touches
//! transports, permissions other than SSH, or secrets; a new node name takes effect when the
//! worker restarts (the result says so).

use std::collections::BTreeMap;
use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::{Handler, HandlerError, JobContext};
use crate::manifest;

/// Payload keys every job may carry (docs/wire-format.md#job-entries); they are not part of the device config.
const RUNTIME_KEYS: [&str; 6] = [
    "target_node",
    "timeout_ms",
    "maxAttempts",
    "rayId",
    "type",
    "jobId",
];

/// The wizard's config (the Go agent's `DeviceConfig`); every field optional.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceConfig {
    #[serde(alias = "device_name")]
    device_name: Option<String>,
    services: Option<Vec<ServiceItem>>,
    #[serde(alias = "auto_start_services")]
    auto_start_services: Option<bool>,
    #[serde(alias = "ssh_enabled")]
    ssh_enabled: Option<bool>,
    #[serde(alias = "custom_tags")]
    custom_tags: Option<Vec<String>>,
    #[serde(alias = "health_monitoring_enabled")]
    health_monitoring_enabled: Option<bool>,
    #[serde(alias = "alert_on_offline")]
    alert_on_offline: Option<bool>,
    #[serde(alias = "alert_on_high_temp")]
    alert_on_high_temp: Option<bool>,
    #[serde(flatten)]
    rest: BTreeMap<String, Value>,
}

/// A service by name, or a full manifest entry.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ServiceItem {
    Name(String),
    Entry(Value),
}

/// Applies device configs to one manifest; one at a time.
#[derive(Debug)]
pub struct DeviceConfigHandler {
    manifest: PathBuf,
    data_dir: PathBuf,
    lock: Mutex<()>,
}

impl DeviceConfigHandler {
    pub fn new(manifest: PathBuf, data_dir: PathBuf) -> Self {
        Self {
            manifest,
            data_dir,
            lock: Mutex::new(()),
        }
    }
}

fn bad(msg: impl Into<String>) -> HandlerError {
    HandlerError::permanent(msg)
}

/// The manifest after applying `cfg` to `before`; an invalid value is a permanent error.
fn apply(before: &Value, cfg: DeviceConfig) -> Result<Value, HandlerError> {
    let unknown: Vec<&String> = cfg
        .rest
        .keys()
        .filter(|k| !RUNTIME_KEYS.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        return Err(bad(format!(
            "unknown device config field(s) {unknown:?}: expected deviceName, services, autoStartServices, \
             sshEnabled, customTags, healthMonitoringEnabled, alertOnOffline, alertOnHighTemp"
        )));
    }
    let mut after = before.clone();
    if let Some(name) = cfg.device_name {
        let name = name.trim().to_string();
        if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
            return Err(bad("deviceName must be 1 to 64 printable characters"));
        }
        manifest::set(&mut after, "node", "name", Some(json!(name)));
    }
    if let Some(tags) = cfg.custom_tags {
        for t in &tags {
            if t.is_empty()
                || t.len() > 64
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c))
            {
                return Err(bad(format!(
                    "customTags: {t:?} is not a tag (1 to 64 of a-z, 0-9, - _ . :)"
                )));
            }
        }
        manifest::set(&mut after, "node", "tags", Some(json!(tags)));
    }
    if let Some(items) = cfg.services {
        let current: Vec<Value> = before
            .get("services")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let mut list = Vec::new();
        for item in items {
            let entry = match item {
                ServiceItem::Name(n) => {
                    let engine: citadel_compose::Engine =
                        n.parse().map_err(|e| bad(format!("services: {e}")))?;
                    current
                        .iter()
                        .find(|s| s.get("name").and_then(Value::as_str) == Some(engine.name()))
                        .cloned()
                        .unwrap_or_else(|| json!({ "name": engine.name() }))
                }
                ServiceItem::Entry(v) => v,
            };
            list.push(entry);
        }
        after
            .as_object_mut()
            .expect("an object")
            .insert("services".into(), Value::Array(list));
    }
    if let Some(b) = cfg.ssh_enabled {
        let mut perms = after
            .get("permissions")
            .cloned()
            .unwrap_or_else(|| json!({}));
        manifest::set(&mut perms, "ssh", "enabled", Some(json!(b)));
        after
            .as_object_mut()
            .expect("an object")
            .insert("permissions".into(), perms);
    }
    for (key, v) in [
        ("health", cfg.health_monitoring_enabled),
        ("alert_on_offline", cfg.alert_on_offline),
        ("alert_on_high_temp", cfg.alert_on_high_temp),
    ] {
        if let Some(b) = v {
            manifest::set(&mut after, "monitoring", key, Some(json!(b)));
        }
    }
    // The strict parser names a bad service entry (unknown engine, unknown key, bad port).
    let text = yaml_serde::to_string(&after).map_err(|e| bad(e.to_string()))?;
    crate::config::FileConfig::parse(&text)
        .map_err(|e| bad(format!("the config would make an invalid manifest: {e:#}")))?;
    Ok(after)
}

#[async_trait]
impl Handler for DeviceConfigHandler {
    async fn run(&self, ctx: &JobContext) -> Result<Value, HandlerError> {
        let mut cfg: DeviceConfig = serde_json::from_value(ctx.job.payload.clone())
            .map_err(|e| bad(format!("invalid device config: {e}")))?;
        let auto_start = cfg.auto_start_services.take().unwrap_or(true);
        let _one_at_a_time = self.lock.lock().await;
        let before = manifest::load_value(&self.manifest)
            .map_err(|e| bad(format!("the current manifest: {e:#}")))?;
        let after = apply(&before, cfg)?;
        let changes = manifest::diff(&before, &after);
        if !changes.is_empty() {
            manifest::store_value(&self.manifest, &after)
                .map_err(|e| HandlerError::retryable(format!("writing the manifest: {e:#}")))?;
            tracing::info!(job_id = %ctx.job.id, changes = changes.len(), manifest = %self.manifest.display(), "device config applied");
        }
        let services_changed = changes.iter().any(|c| c.path.starts_with("services"));
        let mut converged = Value::Null;
        if auto_start && services_changed {
            let file = crate::config::FileConfig::load(&self.manifest, true)
                .map_err(|e| bad(format!("{e:#}")))?;
            let specs = file.services;
            let driver = crate::services::driver(&self.data_dir)
                .await
                .map_err(|e| HandlerError::retryable(format!("{e:#}")))?;
            let done = tokio::select! {
                r = crate::services::converge(&driver, &specs, None) => r.map_err(|e| HandlerError::retryable(format!("{e:#}")))?,
                () = ctx.cancel.cancelled() => return Err(HandlerError::retryable("cancelled while converging the services")),
            };
            converged = json!({
                "up": done.up.iter().map(|e| e.name()).collect::<Vec<_>>(),
                "down": done.down.iter().map(|e| e.name()).collect::<Vec<_>>(),
            });
        }
        let restart: Vec<&str> = changes
            .iter()
            .filter(|c| c.path == "node.name")
            .map(|c| c.path.as_str())
            .collect();
        Ok(json!({
            "manifest": self.manifest.display().to_string(),
            "changed": !changes.is_empty(),
            "changes": changes,
            "services": converged,
            "restart_required_for": restart,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::test_support::ctx;

    fn handler() -> (tempfile::TempDir, DeviceConfigHandler) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("citadel.yaml");
        std::fs::write(&path, "node:\n  name: old\nworker:\n  concurrency: 2\n").unwrap();
        let h = DeviceConfigHandler::new(path, dir.path().to_path_buf());
        (dir, h)
    }

    #[tokio::test]
    async fn applies_name_tags_and_monitoring_and_reports_the_diff() {
        let (_d, h) = handler();
        let payload = json!({"deviceName": "gpu-7", "customTags": ["a100", "lab"], "sshEnabled": true,
            "alertOnOffline": true, "target_node": "old", "timeout_ms": 5000});
        let r = h
            .run(&ctx("APPLY_DEVICE_CONFIG", payload.clone(), 1).0)
            .await
            .unwrap();
        assert_eq!(r["changed"], true);
        let paths: Vec<&str> = r["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        assert_eq!(
            paths,
            [
                "monitoring.alert_on_offline",
                "node.name",
                "node.tags",
                "permissions.ssh.enabled"
            ]
        );
        assert_eq!(r["restart_required_for"], json!(["node.name"]));
        let file = crate::config::FileConfig::load(&h.manifest, true).unwrap();
        assert_eq!(file.node.name.as_deref(), Some("gpu-7"));
        assert_eq!(file.worker.concurrency, Some(2), "other sections kept");
        let again = h
            .run(&ctx("APPLY_DEVICE_CONFIG", payload, 1).0)
            .await
            .unwrap();
        assert_eq!(again["changed"], false);
    }

    #[tokio::test]
    async fn bad_configs_are_permanent_errors_and_leave_the_manifest_alone() {
        let (_d, h) = handler();
        let before = std::fs::read_to_string(&h.manifest).unwrap();
        for (payload, needle) in [
            (json!({"services": ["vllm", "vlm"]}), "vlm"),
            (json!({"deviceName": ""}), "deviceName"),
            (json!({"customTags": ["a b"]}), "customTags"),
            (json!({"devicename": "x"}), "devicename"),
            (json!({"services": [{"name": "ollama", "prot": 1}]}), "prot"),
        ] {
            let err = h
                .run(&ctx("APPLY_DEVICE_CONFIG", payload, 1).0)
                .await
                .unwrap_err();
            assert!(!err.retryable && err.message.contains(needle), "{err:?}");
        }
        assert_eq!(std::fs::read_to_string(&h.manifest).unwrap(), before);
    }
}
