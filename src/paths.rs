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

/// Writes a file readers must see whole or not at all, readable by the owner only: a temp file
/// (mode 0600) beside it, synced, renamed over the old one, and the folder synced.
pub fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
