//! A throwaway `nats-server -js` on a free loopback port with its own temporary store directory,
//! for `citadel bench nats` and the tests. It can be stopped and started again on the same port
//! and store (JetStream state survives); it is killed and its store removed when dropped. It only
//! runs the Debian binary; it never touches a server the user runs.

use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A running local nats-server with JetStream.
#[derive(Debug)]
pub struct LocalNats {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
}

impl LocalNats {
    /// Starts `nats-server -js` on a free 127.0.0.1 port and waits until it greets a client.
    pub fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let store = std::env::temp_dir().join(format!(
            "citadel-nats-{}-{port}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&store)?;
        let mut server = Self {
            child: None,
            port,
            store,
        };
        server.launch()?;
        Ok(server)
    }

    fn launch(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("nats-server");
        cmd.args(["-js", "-a", "127.0.0.1", "-p", &self.port.to_string()])
            .arg("-sd")
            .arg(&self.store);
        let child = crate::process::spawn_quiet(&mut cmd, "nats-server")?;
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(10) {
            if self.greets() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(std::io::Error::other(format!(
            "nats-server did not answer on port {}",
            self.port
        )))
    }

    /// Whether the server sends its `INFO` greeting (it listens once JetStream is up).
    fn greets(&self) -> bool {
        let Ok(s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("INFO")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The JetStream store directory (kept across `stop`/`restart`).
    pub fn store(&self) -> &Path {
        &self.store
    }

    /// Kills the server (SIGKILL); what JetStream wrote stays in the store.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server as an operator would (SIGTERM): it writes what it holds in memory to
    /// the store first.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.launch()
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
