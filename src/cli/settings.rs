//! `citadel config show`: the effective configuration (defaults < manifest < `CITADEL_*`
//! environment) with where each value came from. Flags override these per command. It only
//! reads.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use crate::config::{self, FileConfig};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Every setting, its value and its source (default, manifest, or the environment variable).
    Show {
        /// The manifest (default: DATA_DIR/citadel.yaml when it exists).
        #[arg(long, env = "CITADEL_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// JSON lines `{key, value, source}` instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: ConfigCommand, data_dir: &Path) -> anyhow::Result<()> {
    let ConfigCommand::Show { config, json } = cmd;
    let (path, required) = config::config_path(config.as_deref(), data_dir);
    let file = FileConfig::load(&path, required)?;
    let rows = config::effective(&file, &|k| std::env::var(k).ok());
    if json {
        for r in &rows {
            let line =
                serde_json::json!({"key": r.key, "value": r.value, "source": r.source.to_string()});
            println!("{line}");
        }
        return Ok(());
    }
    let exists = if path.exists() {
        ""
    } else {
        " (not found: defaults only)"
    };
    println!("manifest: {}{exists}", path.display());
    let table: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| {
            let value = if r.value.is_empty() {
                "-".to_string()
            } else {
                r.value
            };
            vec![r.key.to_string(), value, r.source.to_string()]
        })
        .collect();
    crate::format::table(&["SETTING", "VALUE", "SOURCE"], &table);
    println!("(flags given to a command override these for that command)");
    Ok(())
}
