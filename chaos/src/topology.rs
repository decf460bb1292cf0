//! One scenario's containers: a docker network the topology creates, brokers (Redis, NATS with
//! JetStream) and citadel workers, each with its data directory on the host (mounted at `/data`)
//! so what it stored outlives a kill: a restarted broker has its AOF or JetStream store, and a
//! restarted worker is the *same* worker (same journal, same consumer name). The faults:
//! signals (SIGKILL, SIGTERM), restart, `docker pause`, network disconnect, a Redis that loses
//! its last second of writes (its AOF cut back); a supervisor restarts workers that die (a kill,
//! or a crash point of the chaos build), at once or after a while, and records each death as a
//! fault (the faults live in `faults`). Workers can get host folders mounted besides their
//! `/data` (side effects).
//!
//! The test process reaches brokers only through ports published on 127.0.0.1; containers reach
//! each other by container name on the network. Everything the topology created (containers,
//! network, data directories) is removed when it is dropped, also when the scenario failed. It
//! must never touch a container it did not create (all carry the label `citadel.chaos=<id>`).

mod faults;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::bollard::query_parameters::KillContainerOptions;
use testcontainers::bollard::Docker;
use testcontainers::core::{ContainerPort, IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// A fault: what happened, when it began and when it was over (restart done, unpaused,
/// reconnected).
#[derive(Debug, Clone)]
pub struct Fault {
    pub what: String,
    pub from: SystemTime,
    pub to: SystemTime,
}

/// The brokers a topology can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// Redis, AOF with fsync always: a kill loses nothing it answered.
    Redis,
    /// nats-server with JetStream, file storage.
    Nats,
}

impl Broker {
    /// The member name scenarios give it, and its URL scheme.
    pub fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Nats => "nats",
        }
    }

    /// The port clients connect to.
    fn port(self) -> u16 {
        match self {
            Broker::Redis => 6379,
            Broker::Nats => 4222,
        }
    }
}

/// How to start one worker: its name (node name, container name suffix), extra flags of
/// `citadel work`, and host folders mounted into it besides its `/data`.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub name: String,
    pub args: Vec<String>,
    /// `(host folder, path in the container)`.
    pub mounts: Vec<(PathBuf, String)>,
}

impl WorkerSpec {
    /// A Redis worker on `broker` with a 5 s lease and concurrency 4 (flags added later win).
    pub fn redis(name: &str, broker: &str) -> Self {
        Self::on(Broker::Redis, name, broker)
    }

    /// A worker of `kind` on the broker host `broker`: `--redis-url`, or `--transport nats
    /// --nats-url`; a 5 s lease and concurrency 4 (flags added later win); Redis workers keep a
    /// finished job's event stream 2 h (`--events-grace`), past the end of any run.
    pub fn on(kind: Broker, name: &str, broker: &str) -> Self {
        let spec = Self {
            name: name.to_owned(),
            args: Vec::new(),
            mounts: Vec::new(),
        };
        let url = format!("{}://{broker}:{}", kind.name(), kind.port());
        let spec = match kind {
            // The checker reads every job's event stream after the run: keep them past it.
            Broker::Redis => spec.arg("--redis-url", &url).arg("--events-grace", "2h"),
            Broker::Nats => spec.arg("--transport", "nats").arg("--nats-url", &url),
        };
        spec.arg("--lease", "5s").arg("--concurrency", "4")
    }

    /// Sets `flag` to `value`, replacing an earlier value of the same flag.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args[i + 1] = value.to_owned();
        } else {
            self.args.extend([flag.to_owned(), value.to_owned()]);
        }
        self
    }

    /// Adds a flag without a value (`--enable-shell`), once.
    pub fn flag(mut self, flag: &str) -> Self {
        if !self.args.iter().any(|a| a == flag) {
            self.args.push(flag.to_owned());
        }
        self
    }

    /// Mounts the host folder `host` at `inside` (e.g. where shell jobs leave their side effects).
    pub fn mount(mut self, host: impl Into<PathBuf>, inside: &str) -> Self {
        self.mounts.push((host.into(), inside.to_owned()));
        self
    }
}

struct Member {
    container: ContainerAsync<GenericImage>,
    /// The container's name, also its host name on the network.
    host: String,
    /// What kind of broker it is (`None`: a worker or a control plane).
    broker: Option<Broker>,
}

/// The containers of one scenario.
pub struct Topology {
    id: String,
    docker: Docker,
    brokers: BTreeMap<String, Member>,
    workers: BTreeMap<String, Member>,
    dir: tempfile::TempDir,
    faults: Arc<Mutex<Vec<Fault>>>,
    restarts: Arc<AtomicU64>,
    supervisor: Option<faults::Supervisor>,
}

impl std::fmt::Debug for Topology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topology")
            .field("id", &self.id)
            .field("brokers", &self.brokers.keys().collect::<Vec<_>>())
            .field("workers", &self.workers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Topology {
    /// An empty topology for `scenario` (a short name: it prefixes every container).
    pub fn new(scenario: &str) -> Result<Self> {
        let id = format!("cc-{scenario}-{:04x}", fastrand::u16(..));
        let docker = Docker::connect_with_local_defaults().context("connecting to Docker")?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("{id}-"))
            .tempdir()
            .context("creating the scenario's data folder")?;
        Ok(Self {
            id,
            docker,
            brokers: BTreeMap::new(),
            workers: BTreeMap::new(),
            dir,
            faults: Arc::default(),
            restarts: Arc::default(),
            supervisor: None,
        })
    }

    /// The scenario's id: every container it creates carries the label `citadel.chaos=<id>`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The docker network every container of the scenario joins.
    pub fn network(&self) -> String {
        format!("{}-net", self.id)
    }

    /// The host name of member `name` on the network (for a worker's broker URL).
    pub fn host(&self, name: &str) -> String {
        format!("{}-{name}", self.id)
    }

    fn request(
        &self,
        image: GenericImage,
        name: &str,
    ) -> testcontainers::ContainerRequest<GenericImage> {
        image
            .with_container_name(self.host(name))
            .with_network(self.network())
            .with_label("citadel.chaos", &self.id)
            .with_startup_timeout(Duration::from_secs(30))
    }

    /// Starts a broker `name` of `kind`, its store in `<scenario dir>/<name>` (mounted at
    /// `/data`): Redis appends to its AOF there, JetStream keeps its streams and consumers there.
    pub async fn start_broker(&mut self, kind: Broker, name: &str) -> Result<()> {
        self.start_broker_with(kind, name, &[]).await
    }

    /// [`Topology::start_broker`] with `args` after the image's own (a later option wins:
    /// `["--appendfsync", "everysec"]` makes a Redis that can lose its last second of writes).
    pub async fn start_broker_with(
        &mut self,
        kind: Broker,
        name: &str,
        args: &[&str],
    ) -> Result<()> {
        let data = self.worker_dir(name);
        std::fs::create_dir_all(&data)?;
        let ((image, tag), ready) = match kind {
            Broker::Redis => (
                crate::REDIS_IMAGE,
                WaitFor::message_on_stdout("Ready to accept connections"),
            ),
            Broker::Nats => (
                crate::NATS_IMAGE,
                WaitFor::message_on_stderr("Server is ready"),
            ),
        };
        let port = kind.port();
        let image = GenericImage::new(image, tag)
            .with_exposed_port(port.tcp())
            .with_wait_for(ready);
        let mut request = self
            .request(image, name)
            .with_mount(Mount::bind_mount(data.display().to_string(), "/data"));
        if !args.is_empty() {
            request = request.with_cmd(args.iter().map(|a| a.to_string()));
        }
        let container = request
            .with_host_config_modifier(move |h| publish_on_loopback(h, port))
            .start()
            .await
            .with_context(|| format!("starting {} `{name}`", kind.name()))?;
        self.brokers.insert(
            name.to_owned(),
            Member {
                container,
                host: self.host(name),
                broker: Some(kind),
            },
        );
        Ok(())
    }

    /// Starts a control plane `name` (`citadel nexus serve` in the citadel image, listening on
    /// the scenario network, its data in `<scenario dir>/<name>`), counted among the brokers so
    /// faults apply to it too. Returns its bearer token (the file it wrote at first start).
    pub async fn start_plane(&mut self, name: &str) -> Result<String> {
        let data = self.worker_dir(name);
        std::fs::create_dir_all(&data)?;
        let (image, tag) = crate::CITADEL_IMAGE;
        let image = GenericImage::new(image, tag)
            .with_wait_for(WaitFor::message_on_stderr("control plane listening on"));
        let cmd = [
            "nexus",
            "serve",
            "--listen",
            "0.0.0.0:7411",
            "--data",
            "/data",
        ]
        .map(String::from);
        let container = self
            .request(image, name)
            .with_mount(Mount::bind_mount(data.display().to_string(), "/data"))
            .with_cmd(cmd)
            .start()
            .await
            .with_context(|| format!("starting the control plane `{name}`"))?;
        self.brokers.insert(
            name.to_owned(),
            Member {
                container,
                host: self.host(name),
                broker: None,
            },
        );
        let token = std::fs::read_to_string(data.join("token"))
            .with_context(|| format!("reading the token of `{name}`"))?;
        Ok(token.trim().to_owned())
    }

    /// `redis://127.0.0.1:PORT` or `nats://127.0.0.1:PORT` of broker `name`, as published now
    /// (a restart may change it).
    pub async fn broker_url(&self, name: &str) -> Result<String> {
        let m = self.member(name)?;
        let kind = m
            .broker
            .with_context(|| format!("`{name}` is not a broker"))?;
        let port = m
            .container
            .get_host_port_ipv4(ContainerPort::Tcp(kind.port()))
            .await
            .with_context(|| format!("the published port of `{name}`"))?;
        Ok(format!("{}://127.0.0.1:{port}", kind.name()))
    }

    /// Starts a worker. Its data directory is `<scenario dir>/<name>`, kept across restarts.
    pub async fn start_worker(&mut self, spec: WorkerSpec) -> Result<()> {
        let data = self.worker_dir(&spec.name);
        std::fs::create_dir_all(&data)?;
        let (image, tag) = crate::CITADEL_IMAGE;
        let image =
            GenericImage::new(image, tag).with_wait_for(WaitFor::message_on_stderr(" working: "));
        let mut cmd: Vec<String> = [
            "--log",
            "info,citadel=info,citadel_transports=info",
            "work",
            "--data-dir",
            "/data",
            "--node-name",
            &spec.name,
        ]
        .map(String::from)
        .to_vec();
        cmd.extend(spec.args.iter().cloned());
        let mut request = self
            .request(image, &spec.name)
            .with_mount(Mount::bind_mount(data.display().to_string(), "/data"));
        for (host, inside) in &spec.mounts {
            request = request.with_mount(Mount::bind_mount(host.display().to_string(), inside));
        }
        let container = request
            .with_cmd(cmd)
            // A PID 1 cannot SIGKILL itself: the crash points need the worker under an init.
            .with_host_config_modifier(|h| h.init = Some(true))
            .start()
            .await
            .with_context(|| format!("starting worker `{}`", spec.name))?;
        self.workers.insert(
            spec.name.clone(),
            Member {
                container,
                host: self.host(&spec.name),
                broker: None,
            },
        );
        Ok(())
    }

    /// The scenario's host folder: the members' data folders and whatever else the scenario
    /// keeps on the host (removed with the topology).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The host folder mounted as member `name`'s `/data`.
    pub fn worker_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn member(&self, name: &str) -> Result<&Member> {
        self.brokers
            .get(name)
            .or_else(|| self.workers.get(name))
            .with_context(|| format!("no member `{name}` in this topology"))
    }

    /// Sends `signal` (`SIGKILL`, `SIGTERM`, …) to member `name`'s main process.
    pub async fn signal(&self, name: &str, signal: &str) -> Result<()> {
        let m = self.member(name)?;
        self.docker
            .kill_container(
                &m.host,
                Some(KillContainerOptions {
                    signal: signal.to_owned(),
                }),
            )
            .await
            .with_context(|| format!("{signal} to `{name}`"))
    }

    /// Starts a stopped member again (same container: same data, same name).
    pub async fn start(&self, name: &str) -> Result<()> {
        self.member(name)?
            .container
            .start()
            .await
            .with_context(|| format!("restarting `{name}`"))
    }

    /// Starts every worker that has died (and was not restarted: the scenario stopped
    /// supervising) and waits until each is working again, so its crash recovery has run (a job
    /// its death left `running` is journaled `interrupted`, as on any restart).
    pub async fn revive_workers(&self) -> Result<()> {
        for name in self.worker_names() {
            let host = &self.member(&name)?.host;
            if exited(&self.docker, host).await?.is_none() {
                continue;
            }
            let before = self
                .logs(&name, usize::MAX)
                .await
                .matches(" working: ")
                .count();
            self.start(&name).await?;
            let until = Instant::now() + Duration::from_secs(30);
            while self
                .logs(&name, usize::MAX)
                .await
                .matches(" working: ")
                .count()
                <= before
            {
                if Instant::now() > until {
                    bail!("`{name}` did not start working again");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// SIGKILLs worker `name` unless it has stopped already, and waits until it has.
    pub async fn stop_worker(&self, name: &str) -> Result<()> {
        let host = &self.member(name)?.host;
        if exited(&self.docker, host).await?.is_none() {
            // It may die by itself in between (a crash point): then the signal finds no process.
            let _ = self.signal(name, "SIGKILL").await;
        }
        self.wait_exit(name, Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Waits until member `name` has exited; returns its exit code.
    pub async fn wait_exit(&self, name: &str, timeout: Duration) -> Result<i64> {
        let host = &self.member(name)?.host;
        let until = Instant::now() + timeout;
        loop {
            if let Some(code) = exited(&self.docker, host).await? {
                return Ok(code);
            }
            if Instant::now() > until {
                bail!("`{name}` still runs after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn record(&self, what: String, from: SystemTime) {
        self.faults.lock().expect("poisoned").push(Fault {
            what,
            from,
            to: SystemTime::now(),
        });
    }

    /// The faults so far (deaths seen by the supervisor, broker kills, pauses, cuts).
    pub fn faults(&self) -> Vec<Fault> {
        self.faults.lock().expect("poisoned").clone()
    }

    /// The last `lines` lines of member `name`'s output (for a failure's diagnosis).
    pub async fn logs(&self, name: &str, lines: usize) -> String {
        let Ok(m) = self.member(name) else {
            return String::new();
        };
        let mut out = m.container.stdout_to_vec().await.unwrap_or_default();
        out.extend(m.container.stderr_to_vec().await.unwrap_or_default());
        let text = String::from_utf8_lossy(&out);
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Names of the workers.
    pub fn worker_names(&self) -> Vec<String> {
        self.workers.keys().cloned().collect()
    }
}

/// `Some(exit code)` when the container has stopped (not when it is paused).
async fn exited(docker: &Docker, host: &str) -> Result<Option<i64>> {
    let c = docker.inspect_container(host, None).await?;
    let state = c.state.context("no container state")?;
    if state.running == Some(true) || state.restarting == Some(true) {
        return Ok(None);
    }
    Ok(Some(state.exit_code.unwrap_or(-1)))
}

/// Publishes `port` on 127.0.0.1 only, on a port the OS picks.
fn publish_on_loopback(h: &mut HostConfig, port: u16) {
    h.publish_all_ports = Some(false);
    h.port_bindings = Some(
        [(
            format!("{port}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".into()),
                host_port: Some(String::new()),
            }]),
        )]
        .into(),
    );
}

impl Drop for Topology {
    /// Removes every container and the network of the scenario, whatever happened; the data
    /// folders go with the temporary directory.
    fn drop(&mut self) {
        if let Some(s) = self.supervisor.take() {
            s.stop.store(true, Ordering::Relaxed);
            s.task.abort();
        }
        let filter = format!("label=citadel.chaos={}", self.id);
        let ids = std::process::Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .split_whitespace()
                    .map(String::from)
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        if !ids.is_empty() {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", "-v"])
                .args(&ids)
                .output();
        }
        let _ = std::process::Command::new("docker")
            .args(["network", "rm", &self.network()])
            .output();
    }
}
