//! `citadel up`, `citadel down`, `citadel services ls`, `citadel logs`: the manifest's services
//! through the compose driver. `up` converges (starts the wanted engines, stops the ones no
//! longer listed, waits for each to answer its readiness probe) and then works like `citadel
//! work` with the same flags. These commands never edit the manifest.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use citadel_compose::Engine;
use clap::{Args, Subcommand};

use crate::config::{self, FileConfig};
use crate::format;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// How long each service gets to answer its readiness probe (model loading can be slow).
    #[arg(long, default_value = "10m", value_name = "DURATION")]
    ready_timeout: String,
    /// Only converge the services; do not start working.
    #[arg(long)]
    no_work: bool,
    #[command(flatten)]
    work: super::work::WorkArgs,
}

#[derive(Debug, Args)]
pub struct ManifestArg {
    /// The manifest (default: DATA_DIR/citadel.yaml).
    #[arg(long, env = "CITADEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    /// Services to stop (default: every service of the manifest and any citadel started before).
    names: Vec<String>,
    #[command(flatten)]
    manifest: ManifestArg,
}

#[derive(Debug, Subcommand)]
pub enum ServicesCommand {
    /// The manifest's services: container state, Docker health, readiness, URL.
    Ls {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        manifest: ManifestArg,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The service (vllm, ollama, llamacpp, lmstudio).
    name: String,
    /// Keep streaming new lines.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<u32>,
}

fn load(explicit: Option<&Path>, data_dir: &Path) -> anyhow::Result<(PathBuf, FileConfig)> {
    let (path, _) = config::config_path(explicit, data_dir);
    if !path.exists() {
        bail!(
            "no manifest at {}: run `citadel init --offline` (or `citadel init --control-plane URL`) first",
            path.display()
        );
    }
    let file = FileConfig::load(&path, true)?;
    Ok((path, file))
}

pub async fn up(args: UpArgs, data_dir: &Path) -> anyhow::Result<()> {
    let (path, file) = load(args.work.config_path(), data_dir)?;
    let specs = file.services.clone();
    let timeout = format::parse_duration(&args.ready_timeout).context("--ready-timeout")?;
    let started_before = Engine::ALL
        .iter()
        .any(|e| citadel_compose::files::service_dir(data_dir, *e).exists());
    if specs.is_empty() && !started_before {
        eprintln!("citadel: the manifest {} lists no services", path.display());
    } else {
        eprintln!(
            "citadel: converging {} service(s) from {}",
            specs.len(),
            path.display()
        );
        let driver = crate::services::driver(data_dir).await?;
        let done = crate::services::converge(&driver, &specs, Some(timeout)).await?;
        for e in &done.down {
            eprintln!("citadel: stopped {e} (no longer in the manifest)");
        }
        print_table(&citadel_compose::list_services(&driver, &specs).await?);
    }
    if args.no_work {
        return Ok(());
    }
    super::work::run(args.work, data_dir).await
}

pub async fn down(args: DownArgs, data_dir: &Path) -> anyhow::Result<()> {
    let engines: Vec<Engine> = if args.names.is_empty() {
        let (_, file) = load(args.manifest.config.as_deref(), data_dir)?;
        let mut list: Vec<Engine> = file.services.iter().map(|s| s.engine).collect();
        for e in Engine::ALL {
            if citadel_compose::files::service_dir(data_dir, e).exists() && !list.contains(&e) {
                list.push(e);
            }
        }
        list
    } else {
        args.names
            .iter()
            .map(|n| n.parse::<Engine>())
            .collect::<Result<_, _>>()?
    };
    if engines.is_empty() {
        println!("no services to stop");
        return Ok(());
    }
    let driver = crate::services::driver(data_dir).await?;
    for e in engines {
        driver.down(e).await?;
        println!("stopped {e} ({})", driver.project(e));
    }
    Ok(())
}

pub async fn services(cmd: ServicesCommand, data_dir: &Path) -> anyhow::Result<()> {
    match cmd {
        ServicesCommand::Ls { json, manifest } => {
            let (path, _) = load(manifest.config.as_deref(), data_dir)?;
            let list = crate::services::status(data_dir, &path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("the manifest lists no services");
            } else {
                print_table(&list);
            }
            Ok(())
        }
    }
}

pub async fn logs(args: LogsArgs, data_dir: &Path) -> anyhow::Result<()> {
    let engine: Engine = args.name.parse()?;
    let driver = crate::services::driver(data_dir).await?;
    let status = driver
        .logs_command(engine, args.follow, args.tail)?
        .status()
        .await
        .context("running compose logs")?;
    if !status.success() {
        bail!("compose logs for {engine} failed ({status})");
    }
    Ok(())
}

fn print_table(list: &[citadel_compose::ServiceStatus]) {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.state.as_str().to_string(),
                s.health.clone().unwrap_or_else(|| "-".into()),
                if s.ready { "ready" } else { "not ready" }.to_string(),
                s.url.clone(),
                s.image.clone(),
            ]
        })
        .collect();
    crate::format::table(
        &["SERVICE", "STATE", "HEALTH", "READY", "URL", "IMAGE"],
        &rows,
    );
}
