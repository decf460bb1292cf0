//! The node's mesh key: an x25519 static secret in `DATA_DIR/mesh.key` (base64, mode 0600),
//! created by `citadel init` or on first use; its public key is the node's mesh identity. This
//! module owns that file; it must never log, print or return the secret in text (its `Debug`
//! shows the public key only).

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use citadel_transports::control_plane::mesh_wire::MeshKey;
use x25519_dalek::{PublicKey, StaticSecret};

/// The key file of a data directory.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("mesh.key")
}

/// The node's key pair.
#[derive(Clone)]
pub struct NodeKey {
    secret: StaticSecret,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey(public {})", self.public())
    }
}

impl NodeKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> anyhow::Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).context("reading the system's random source")?;
        Ok(Self {
            secret: StaticSecret::from(bytes),
        })
    }

    /// The public key: the node's mesh identity.
    pub fn public(&self) -> MeshKey {
        MeshKey(PublicKey::from(&self.secret).to_bytes())
    }

    /// The secret, for the data plane's WireGuard state.
    pub fn secret(&self) -> &StaticSecret {
        &self.secret
    }

    fn encode(&self) -> String {
        format!("{}\n", STANDARD.encode(self.secret.to_bytes()))
    }

    fn decode(text: &str, file: &Path) -> anyhow::Result<Self> {
        let bytes: [u8; 32] = STANDARD
            .decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .with_context(|| {
                format!(
                    "{} does not hold a mesh key (32 bytes, base64)",
                    file.display()
                )
            })?;
        Ok(Self {
            secret: StaticSecret::from(bytes),
        })
    }
}

/// Writes a fresh key to `DATA_DIR/mesh.key`, replacing any (`citadel init`: a new identity).
pub fn create(data_dir: &Path) -> anyhow::Result<NodeKey> {
    let key = NodeKey::generate()?;
    crate::paths::write_private(&path(data_dir), key.encode().as_bytes())?;
    Ok(key)
}

/// The key of `DATA_DIR/mesh.key`, created (mode 0600) when missing; a file others may read is
/// restricted to 0600 first.
pub fn load_or_create(data_dir: &Path) -> anyhow::Result<NodeKey> {
    let file = path(data_dir);
    match std::fs::read_to_string(&file) {
        Ok(text) => {
            let mode = std::fs::metadata(&file)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(file = %file.display(), "the mesh key was readable by others; restricting it to mode 0600");
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("restricting {} to mode 0600", file.display()))?;
            }
            NodeKey::decode(&text, &file)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)
                .with_context(|| format!("creating {}", data_dir.display()))?;
            let key = NodeKey::generate()?;
            let mut f = match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)
            {
                Ok(f) => f,
                // Another process created it meanwhile: use that one.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    return load_or_create(data_dir)
                }
                Err(e) => return Err(e).with_context(|| format!("creating {}", file.display())),
            };
            f.write_all(key.encode().as_bytes())?;
            f.sync_all()?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_private_and_never_shown() {
        let dir = tempfile::tempdir().unwrap();
        let key = load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(load_or_create(dir.path()).unwrap().public(), key.public());
        let secret = STANDARD.encode(key.secret().to_bytes());
        let shown = format!("{key:?}");
        assert!(!shown.contains(&secret) && shown.contains(&key.public().to_base64()));
        // A file others could read is restricted; `create` replaces the key.
        std::fs::set_permissions(path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_ne!(create(dir.path()).unwrap().public(), key.public());
        std::fs::write(path(dir.path()), "not a key").unwrap();
        let e = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(e.contains("does not hold a mesh key"), "{e}");
    }
}
