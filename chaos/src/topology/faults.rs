//! The faults a [`Topology`] injects into its members, each recorded as a [`Fault`]: a broker
//! killed and restarted (or made to lose its last second of writes), paused, a worker cut off the
//! network, and the supervisor that restarts workers that die. Part of [`super`]: it must only
//! touch the scenario's own containers and folders.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use testcontainers::bollard::models::{NetworkConnectRequest, NetworkDisconnectRequest};

use super::{exited, Fault, Topology};

impl Topology {
    /// SIGKILLs broker `name`, waits `down`, starts it again; recorded as a fault.
    pub async fn kill_broker(&self, name: &str, down: Duration) -> Result<()> {
        let from = SystemTime::now();
        self.signal(name, "SIGKILL").await?;
        self.wait_exit(name, Duration::from_secs(10)).await?;
        tokio::time::sleep(down).await;
        self.start(name).await?;
        self.record(format!("{name} killed and restarted"), from);
        Ok(())
    }

    /// Redis broker `name` loses its last `lose` of writes, as a power cut under `appendfsync
    /// everysec` (or a failover to a lagging replica) would make it: SIGKILLed after `lose`, its
    /// AOF cut back to the size it had when this began, started again after `down`; recorded as
    /// a fault. (A process kill alone loses nothing: Redis writes its AOF before it answers, and
    /// the kernel keeps what was written; only the fsync is once a second.) Returns the bytes cut.
    pub async fn kill_broker_losing(
        &self,
        name: &str,
        lose: Duration,
        down: Duration,
    ) -> Result<u64> {
        let from = SystemTime::now();
        let aof = current_aof(&self.worker_dir(name))?;
        let kept = std::fs::metadata(&aof)?.len();
        tokio::time::sleep(lose).await;
        self.signal(name, "SIGKILL").await?;
        self.wait_exit(name, Duration::from_secs(10)).await?;
        let written = std::fs::metadata(&aof)?.len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&aof)
            .and_then(|f| f.set_len(kept))
            .with_context(|| format!("cutting {}", aof.display()))?;
        tokio::time::sleep(down).await;
        self.start(name).await?;
        self.record(
            format!("{name} lost its last {lose:?} and was restarted"),
            from,
        );
        Ok(written.saturating_sub(kept))
    }

    /// `docker pause` of `name` for `pause`; recorded as a fault.
    pub async fn pause(&self, name: &str, pause: Duration) -> Result<()> {
        let m = self.member(name)?;
        let from = SystemTime::now();
        m.container.pause().await.context("docker pause")?;
        tokio::time::sleep(pause).await;
        m.container.unpause().await.context("docker unpause")?;
        self.record(format!("{name} paused for {pause:?}"), from);
        Ok(())
    }

    /// Cuts `name` off the network for `cut`, then reconnects it; recorded as a fault.
    pub async fn cut_network(&self, name: &str, cut: Duration) -> Result<()> {
        let m = self.member(name)?;
        let from = SystemTime::now();
        self.docker
            .disconnect_network(
                &self.network(),
                NetworkDisconnectRequest {
                    container: m.host.clone(),
                    force: Some(true),
                },
            )
            .await
            .context("docker network disconnect")?;
        tokio::time::sleep(cut).await;
        self.docker
            .connect_network(
                &self.network(),
                NetworkConnectRequest {
                    container: m.host.clone(),
                    endpoint_config: None,
                },
            )
            .await
            .context("docker network connect")?;
        self.record(format!("{name} cut off the network for {cut:?}"), from);
        Ok(())
    }

    /// From now on, a worker that exits is started again at once (after a SIGKILL or a crash
    /// point) and its death is recorded as a fault.
    pub fn supervise(&mut self) {
        self.supervise_after(Duration::ZERO);
    }

    /// [`Topology::supervise`], but a dead worker stays down for `down` first (longer than the
    /// lease: the other workers take its jobs over before it is back).
    pub fn supervise_after(&mut self, down: Duration) {
        let stop = Arc::new(AtomicBool::new(false));
        let hosts: Vec<String> = self.workers.values().map(|m| m.host.clone()).collect();
        let (docker, faults) = (self.docker.clone(), self.faults.clone());
        let (stop2, restarts2) = (stop.clone(), self.restarts.clone());
        let task = tokio::spawn(async move {
            let mut dead_since: BTreeMap<String, SystemTime> = BTreeMap::new();
            while !stop2.load(Ordering::Relaxed) {
                for host in &hosts {
                    let Ok(Some(code)) = exited(&docker, host).await else {
                        continue;
                    };
                    let from = *dead_since
                        .entry(host.clone())
                        .or_insert_with(SystemTime::now);
                    if from.elapsed().unwrap_or_default() < down {
                        continue;
                    }
                    if let Err(e) = docker.start_container(host, None).await {
                        eprintln!("chaos supervisor: cannot restart {host}: {e}");
                        continue;
                    }
                    dead_since.remove(host);
                    restarts2.fetch_add(1, Ordering::Relaxed);
                    faults.lock().expect("poisoned").push(Fault {
                        what: format!("{host} died (exit code {code}) and was restarted"),
                        from,
                        to: SystemTime::now(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        self.supervisor = Some(Supervisor { stop, task });
    }

    /// Workers the supervisor restarted so far.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Stops restarting workers that die.
    pub async fn unsupervise(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.stop.store(true, Ordering::Relaxed);
            let _ = s.task.await;
        }
    }
}

pub(super) struct Supervisor {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) task: tokio::task::JoinHandle<()>,
}

/// The AOF file Redis appends to now, in its data folder `dir`: the incremental file of the
/// highest sequence number (`appendonlydir/appendonly.aof.N.incr.aof`, Redis 7).
fn current_aof(dir: &std::path::Path) -> Result<PathBuf> {
    let folder = dir.join("appendonlydir");
    let mut best: Option<(u64, PathBuf)> = None;
    for entry in std::fs::read_dir(&folder).with_context(|| format!("{}", folder.display()))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let seq = name
            .strip_suffix(".incr.aof")
            .and_then(|n| n.rsplit('.').next())
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq.filter(|s| best.as_ref().is_none_or(|(b, _)| s > b)) {
            best = Some((seq, path));
        }
    }
    best.map(|(_, p)| p)
        .with_context(|| format!("no incremental AOF in {}", folder.display()))
}
