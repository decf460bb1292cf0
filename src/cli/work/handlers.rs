//! The job handlers `citadel work` registers: the built-in ones (with the shell policy), the
//! node's (`model_download`, `extraction`), `APPLY_DEVICE_CONFIG` and `llm_inference`, each with
//! its settings from the flags, environment and config file. It only builds the registry: it must
//! never run a job.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;

use super::WorkArgs;
use crate::config::FileConfig;
use crate::format;
use crate::handlers::{
    DeviceConfigHandler, DownloadPolicy, ExtractionPolicy, LlmHandler, Registry, ShellPolicy,
};

/// The handler registry of this worker.
pub(super) fn registry(
    args: &WorkArgs,
    file: &FileConfig,
    config_path: &Path,
    data_dir: &Path,
) -> anyhow::Result<Registry> {
    let shell = shell_policy(args, file, data_dir)?;
    if shell.enabled {
        tracing::warn!(allowlist = ?shell.allow, "shell_command is ENABLED: producers can run commands on this machine");
    }
    let w = &file.worker;
    let models_dir = args
        .models_dir
        .clone()
        .or(w.models_dir.clone())
        .unwrap_or_else(|| data_dir.join("models"));
    let extraction = ExtractionPolicy {
        url: args
            .extraction_url
            .clone()
            .or(w.extraction_url.clone())
            .unwrap_or_else(|| crate::handlers::extraction::DEFAULT_URL.into()),
        ..ExtractionPolicy::default()
    };
    let mut registry = Registry::builtin(shell)
        .with_node_handlers(DownloadPolicy::new(models_dir), extraction)
        .context("building the HTTP client of the handlers")?;
    registry.register(
        "APPLY_DEVICE_CONFIG",
        Arc::new(DeviceConfigHandler::new(
            config_path.to_path_buf(),
            data_dir.to_path_buf(),
        )),
    );
    registry.alias("apply_device_config", "APPLY_DEVICE_CONFIG");
    let llm = args.engines.config(&file.llm)?;
    registry.register("llm_inference", Arc::new(LlmHandler::new(llm)));
    Ok(registry)
}

/// `shell_command`'s policy: off unless enabled, the allowlist, the passcode from the variable
/// the file names (else `CITADEL_SHELL_PASSCODE`), the output limit.
fn shell_policy(
    args: &WorkArgs,
    file: &FileConfig,
    data_dir: &Path,
) -> anyhow::Result<ShellPolicy> {
    let shell = &file.permissions.shell;
    Ok(ShellPolicy {
        enabled: args.enable_shell || shell.enabled.unwrap_or(false),
        allow: if args.shell_allow.is_empty() {
            shell.allow.clone().unwrap_or_default()
        } else {
            args.shell_allow.clone()
        },
        passcode: match &shell.passcode_env {
            Some(var) => Some(std::env::var(var).with_context(|| {
                format!("permissions.shell.passcode_env names `{var}`, which is not set")
            })?),
            None => std::env::var("CITADEL_SHELL_PASSCODE")
                .ok()
                .filter(|p| !p.is_empty()),
        },
        workspace: data_dir.join("workspace"),
        max_output: match &shell.max_output {
            Some(s) => usize::try_from(format::parse_size(s)?)?,
            None => ShellPolicy::default().max_output,
        },
    })
}
