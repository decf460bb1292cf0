//! This node's identity on disk: its name (flag, config, else the host name) and an instance id
//! kept in the data directory, which together give the stable consumer name a restarted worker
//! uses to find its own pending jobs. Two installations on one host (two data directories) get
//! different instance ids, so they never share a consumer name. Nothing here is secret.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context as _;

/// The host name, or `citadel-node` when it cannot be read.
pub fn host_name() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().trim().to_string();
    if name.is_empty() {
        "citadel-node".into()
    } else {
        name
    }
}

/// The instance id of the data directory, created (mode 0600) on first use.
pub fn instance_id(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("instance-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let id = format!("{:016x}", fastrand::u64(..));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(file, "{id}")?;
    file.sync_all()?;
    Ok(id)
}

/// The consumer name for a node: `NAME-INSTANCE8`, safe for any broker.
pub fn consumer_name(node_name: &str, instance_id: &str) -> String {
    let clean: String = node_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("{clean}-{}", &instance_id[..instance_id.len().min(8)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_instance_id_is_stable_per_data_dir() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let first = instance_id(a.path()).unwrap();
        assert_eq!(instance_id(a.path()).unwrap(), first);
        assert_ne!(instance_id(b.path()).unwrap(), first);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.path().join("instance-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            consumer_name("gpu box/1", "0123456789abcdef"),
            "gpu-box-1-01234567"
        );
        assert!(!host_name().is_empty());
    }
}
