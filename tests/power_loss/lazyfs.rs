//! A LazyFS mount for power-loss tests: LazyFS (tools/lazyfs/) keeps everything written in its own
//! cache until the writer syncs it, and `lazyfs::clear-cache` drops what was not synced — what a
//! power failure does to a disk. `scripts/test` builds it into `target/lazyfs`. Without FUSE or
//! the LazyFS build the tests are skipped with a printed reason, except under `CI=true`, where
//! that is a failure.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where `scripts/test` (tools/lazyfs/build.sh target/lazyfs) puts the binary.
fn binary() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lazyfs/lazyfs-0.3.0/lazyfs/build/lazyfs")
}

/// Why LazyFS cannot run here, if it cannot.
fn missing() -> Option<String> {
    if !binary().is_file() {
        return Some(format!(
            "no LazyFS build at {} (run tools/lazyfs/build.sh target/lazyfs)",
            binary().display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if Command::new("fusermount3").arg("-V").output().is_err() {
        return Some("no fusermount3".into());
    }
    None
}

pub struct LazyFs {
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl LazyFs {
    /// Mounts a fresh, empty LazyFS; `None` (the test is skipped) when it cannot run here and
    /// this is not CI.
    pub fn mount(test: &str) -> Option<Self> {
        if let Some(why) = missing() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{test}: LazyFS is required under CI=true: {why}"
            );
            eprintln!("{test}: skipped: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        std::fs::create_dir(dir.path().join("root")).unwrap();
        let config = format!(
            "[faults]\nfifo_path=\"{}\"\n[cache]\napply_eviction=false\n[cache.simple]\n\
             custom_size=\"1gb\"\nblocks_per_page=1\n[filesystem]\nlog_all_operations=false\n\
             logfile=\"\"\n",
            dir.path().join("faults.fifo").display()
        );
        std::fs::write(dir.path().join("lazyfs.toml"), config).unwrap();
        let mut fs = Self { dir, process: None };
        fs.start();
        Some(fs)
    }

    /// The mounted folder.
    pub fn path(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }

    fn start(&mut self) {
        let d = self.dir.path();
        let child = Command::new(binary())
            .arg(d.join("mnt"))
            .arg("--config-path")
            .arg(d.join("lazyfs.toml"))
            .args(["-o", "allow_other", "-o", "modules=subdir", "-o"])
            .arg(format!("subdir={}", d.join("root").display()))
            .arg("-f")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting lazyfs");
        self.process = Some(child);
        let started = Instant::now();
        while !self.mounted() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "lazyfs did not mount"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn mounted(&self) -> bool {
        let mnt = self.path().display().to_string();
        std::fs::read_to_string("/proc/mounts")
            .unwrap_or_default()
            .lines()
            .any(|l| l.split(' ').nth(1) == Some(mnt.as_str()))
    }

    /// The power failure: everything written and not synced is dropped.
    pub fn clear_cache(&self) {
        let mut fifo = std::fs::OpenOptions::new()
            .write(true)
            .open(self.dir.path().join("faults.fifo"))
            .expect("opening the lazyfs fault fifo");
        fifo.write_all(b"lazyfs::clear-cache\n").unwrap();
        drop(fifo);
        // LazyFS applies the fault on its own thread; give it time before anyone reads.
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Unmounts and mounts again: the mount now shows only what survived.
    pub fn remount(&mut self) {
        self.unmount();
        self.start();
    }

    fn unmount(&mut self) {
        let Some(mut child) = self.process.take() else {
            return;
        };
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(self.path())
            .status();
        let started = Instant::now();
        while child.try_wait().ok().flatten().is_none() {
            if started.elapsed() > Duration::from_secs(10) {
                let _ = child.kill();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        self.unmount();
    }
}
