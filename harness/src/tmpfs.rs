//! A size-limited tmpfs mounted for a test's lifetime, the way the full-disk tests fill a disk
//! without touching the machine's own: mounted on a folder the test made, lazily unmounted when
//! dropped. Needs root (`mount`); under `CI=true` a failed mount panics (nothing that should run
//! may skip there), elsewhere it returns `None` after printing why.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted tmpfs; unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `3m`) on `dir` (created if missing).
    pub fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).expect("creating the mount point");
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .output();
        let why = match out {
            Ok(o) if o.status.success() => return Some(Self(dir.to_path_buf())),
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "mounting a tmpfs is required under CI=true: {why}"
        );
        eprintln!("skipped: cannot mount a tmpfs ({why})");
        None
    }

    /// Fills what is left of it with a file `name` until the disk is full.
    pub fn fill(&self, name: &str) {
        use std::io::Write as _;
        let mut f = std::fs::File::create(self.0.join(name)).expect("creating the filler");
        let block = vec![0xA5u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        // The last partial block: byte by byte, until not even one fits.
        while f.write_all(&[0]).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
