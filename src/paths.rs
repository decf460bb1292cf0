//! Where citadel keeps its state on disk. One place decides the data directory, so every command
//! and the worker agree on it.

use std::path::PathBuf;

/// The data directory: `$CITADEL_DATA_DIR` (also `--data-dir`), else `$XDG_DATA_HOME/citadel`,
/// else `~/.local/share/citadel`, else `./citadel-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("citadel");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/share/citadel");
    }
    PathBuf::from("citadel-data")
}

/// The journal's folder inside a data directory.
pub fn journal_dir(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("journal")
}
