//! A throwaway `redis-server` on a free loopback port, for `citadel bench` and the tests: started
//! with no persistence (or, for restart tests, an fsync-always append-only file in a folder the
//! caller owns), killed when dropped. It only runs the Debian binary; it never touches a
//! Redis the user runs.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

/// A running local redis-server.
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    /// Where the append-only file lives, when the data must survive a kill.
    persist: Option<std::path::PathBuf>,
}

impl LocalRedis {
    /// Starts `redis-server` on a free 127.0.0.1 port and waits until it answers PING.
    pub async fn start() -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            port,
            persist: None,
        };
        server.launch().await?;
        Ok(server)
    }

    /// Like [`LocalRedis::start`], but every write is in an append-only file in `dir` (fsynced
    /// before Redis answers), so a SIGKILL and [`LocalRedis::restart`] lose nothing.
    pub async fn start_persistent(dir: &std::path::Path) -> std::io::Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server = Self {
            child: None,
            port,
            persist: Some(dir.to_path_buf()),
        };
        server.launch().await?;
        Ok(server)
    }

    async fn launch(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(match self.persist {
                Some(_) => [
                    "--save",
                    "",
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                ],
                None => ["--save", "", "--appendonly", "no", "--appendfsync", "no"],
            })
            .arg("--dir")
            .arg(self.persist.clone().unwrap_or_else(std::env::temp_dir));
        let child = crate::process::spawn_quiet(&mut cmd, "redis-server")?;
        self.child = Some(child);
        for _ in 0..200 {
            if let Ok(client) = redis::Client::open(self.url()) {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                    {
                        return Ok(());
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        Err(std::io::Error::other(format!(
            "redis-server did not answer PING on port {}",
            self.port
        )))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Kills the server (its data is lost unless it was started persistent).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.launch().await
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
