//! The node's services as the commands and handlers see them: the compose driver for this data
//! directory (state in `DATA_DIR/services/`, projects `PREFIX-<engine>` with the prefix from
//! `CITADEL_COMPOSE_PREFIX`, default `citadel`) and the converge step shared by `citadel up` and
//! `APPLY_DEVICE_CONFIG`. It never edits the manifest.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use citadel_compose::{Driver, ServiceSpec};

/// The compose project prefix (`CITADEL_COMPOSE_PREFIX`, default `citadel`).
pub fn prefix() -> String {
    std::env::var("CITADEL_COMPOSE_PREFIX")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| citadel_compose::driver::DEFAULT_PREFIX.to_string())
}

/// The compose driver for a data directory; fails clearly without Docker.
pub async fn driver(data_dir: &Path) -> anyhow::Result<Driver> {
    Ok(Driver::detect(data_dir, &prefix()).await?)
}

/// Starts every wanted service, stops the ones no longer wanted, then waits (up to `ready`) for
/// each wanted one to answer its readiness probe. Returns the engines started and stopped.
pub async fn converge(
    driver: &Driver,
    wanted: &[ServiceSpec],
    ready: Option<Duration>,
) -> anyhow::Result<citadel_compose::driver::Converged> {
    let done = driver
        .converge(wanted)
        .await
        .context("converging the services")?;
    if let Some(timeout) = ready {
        for spec in wanted {
            driver
                .wait_ready(spec, timeout)
                .await
                .with_context(|| format!("waiting for {}", spec.engine))?;
        }
    }
    Ok(done)
}

/// The state and readiness of the manifest's services (for `citadel status`): the manifest at
/// `manifest` (none: no services), through the compose driver of `data_dir`.
pub async fn status(
    data_dir: &Path,
    manifest: &Path,
) -> anyhow::Result<Vec<citadel_compose::ServiceStatus>> {
    let file = crate::config::FileConfig::load(manifest, false)?;
    let specs = file.services.clone();
    if specs.is_empty() {
        return Ok(Vec::new());
    }
    let driver = driver(data_dir).await?;
    Ok(citadel_compose::list_services(&driver, &specs).await?)
}
