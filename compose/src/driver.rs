//! The compose driver: finds `docker compose` (the v2 plugin) or `docker-compose` (v1), checks
//! the daemon, and brings an engine's project (`PREFIX-<engine>`, `citadel-vllm` by default) up,
//! down, or shows its logs, from the files [`crate::files`] materialised. Service state comes
//! from the containers' compose labels (the same for v1 and v2) and readiness from the engine's
//! own HTTP endpoint. It maps the tools' failures to clear [`ComposeError`]s (no Docker, daemon
//! down, port taken). It never edits the manifest and never removes a cache volume.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Command;

use crate::files::{self, Materialised};
use crate::{probe, ComposeError, Engine, ServiceSpec};

/// Which compose tool runs the projects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tool {
    /// `docker compose` (v2 plugin).
    Plugin,
    /// `docker-compose` (v1, e.g. Debian's 1.29).
    Standalone,
}

/// A container's state, as Docker reports it; `Absent` when the project has no container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Restarting,
    Created,
    Exited,
    Paused,
    Dead,
    Absent,
    Other(String),
}

impl ServiceState {
    fn parse(s: &str) -> Self {
        match s.trim() {
            "running" => Self::Running,
            "restarting" => Self::Restarting,
            "created" => Self::Created,
            "exited" => Self::Exited,
            "paused" => Self::Paused,
            "dead" => Self::Dead,
            other => Self::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Created => "created",
            Self::Exited => "exited",
            Self::Paused => "paused",
            Self::Dead => "dead",
            Self::Absent => "absent",
            Self::Other(s) => s,
        }
    }
}

/// One service's state and readiness, for `citadel services ls` and `citadel status`.
#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub project: String,
    pub image: String,
    pub state: ServiceState,
    /// Docker's health check: `healthy`, `unhealthy`, `starting`, or none.
    pub health: Option<String>,
    /// The engine's readiness endpoint answered 2xx just now.
    pub ready: bool,
    pub url: String,
    /// Docker's status line, or why the engine is not ready.
    pub detail: String,
}

/// Runs compose projects for one node.
#[derive(Debug, Clone)]
pub struct Driver {
    tool: Tool,
    state_dir: PathBuf,
    prefix: String,
}

/// The project prefix unless configured: projects are `citadel-vllm`, `citadel-ollama`, …
pub const DEFAULT_PREFIX: &str = "citadel";

impl Driver {
    /// Finds a compose tool and checks that the Docker daemon answers.
    pub async fn detect(state_dir: &Path, prefix: &str) -> Result<Self, ComposeError> {
        let tool = if succeeds("docker", &["compose", "version"]).await {
            Tool::Plugin
        } else if succeeds("docker-compose", &["version"]).await {
            Tool::Standalone
        } else {
            return Err(ComposeError::NoCompose);
        };
        let out = output("docker", &["version", "--format", "{{.Server.Version}}"]).await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ComposeError::DaemonDown(first_line(&stderr)));
        }
        Ok(Self {
            tool,
            state_dir: state_dir.to_path_buf(),
            prefix: prefix.to_string(),
        })
    }

    pub fn tool(&self) -> &Tool {
        &self.tool
    }

    /// The compose project of an engine.
    pub fn project(&self, engine: Engine) -> String {
        format!("{}-{}", self.prefix, engine.name())
    }

    fn compose(&self, engine: Engine, m: &Materialised) -> Command {
        let mut cmd = match self.tool {
            Tool::Plugin => {
                let mut c = Command::new("docker");
                c.arg("compose");
                c
            }
            Tool::Standalone => Command::new("docker-compose"),
        };
        cmd.arg("--project-name").arg(self.project(engine));
        cmd.arg("--project-directory").arg(&m.dir);
        cmd.arg("--env-file").arg(&m.env_file);
        for f in &m.compose_files {
            cmd.arg("--file").arg(f);
        }
        cmd.kill_on_drop(true);
        cmd
    }

    /// The files of an engine as last materialised, or the defaults when it never was.
    fn existing(&self, engine: Engine) -> Result<Materialised, ComposeError> {
        let dir = files::service_dir(&self.state_dir, engine);
        if dir.join("compose.yml").exists() {
            let gpu = dir.join("gpu.yml");
            let mut compose_files = vec![dir.join("compose.yml")];
            if gpu.exists() {
                compose_files.push(gpu);
            }
            Ok(Materialised {
                env_file: dir.join(".env"),
                dir,
                compose_files,
            })
        } else {
            let mut spec = ServiceSpec::new(engine);
            spec.gpu = Some(false);
            files::materialise(&self.state_dir, &spec)
        }
    }

    /// Starts (or updates) an engine's project; returns once compose has started it. A port
    /// held by another process is refused before compose runs.
    pub async fn up(&self, spec: &ServiceSpec) -> Result<(), ComposeError> {
        let m = files::materialise(&self.state_dir, spec)?;
        let (state, _, _) = self.container(spec.engine).await?;
        if state != ServiceState::Running && !port_free(spec.bind(), spec.port()) {
            return Err(ComposeError::PortTaken {
                engine: spec.engine,
                bind: spec.bind().to_string(),
                port: spec.port(),
            });
        }
        let mut cmd = self.compose(spec.engine, &m);
        cmd.args(["up", "--detach", "--remove-orphans"]);
        tracing::info!(engine = %spec.engine, project = %self.project(spec.engine), "compose up");
        self.run(cmd, "up", spec).await
    }

    /// Stops and removes an engine's containers and network (never its cache volumes).
    pub async fn down(&self, engine: Engine) -> Result<(), ComposeError> {
        let m = self.existing(engine)?;
        let mut cmd = self.compose(engine, &m);
        cmd.args(["down", "--remove-orphans"]);
        tracing::info!(%engine, project = %self.project(engine), "compose down");
        self.run(cmd, "down", &ServiceSpec::new(engine)).await
    }

    /// The command that prints (or with `follow`, streams) an engine's logs; the caller runs it
    /// with the terminal attached.
    pub fn logs_command(
        &self,
        engine: Engine,
        follow: bool,
        tail: Option<u32>,
    ) -> Result<Command, ComposeError> {
        let m = self.existing(engine)?;
        let mut cmd = self.compose(engine, &m);
        cmd.arg("logs").arg("--no-color");
        if follow {
            cmd.arg("--follow");
        }
        if let Some(n) = tail {
            cmd.arg(format!("--tail={n}"));
        }
        Ok(cmd)
    }

    async fn run(
        &self,
        mut cmd: Command,
        what: &str,
        spec: &ServiceSpec,
    ) -> Result<(), ComposeError> {
        let program = format!("compose {what} ({})", self.project(spec.engine));
        let out = cmd.output().await.map_err(|source| ComposeError::Spawn {
            program: program.clone(),
            source,
        })?;
        if out.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        Err(classify(&stderr, &program, spec))
    }

    /// The state, health and status line of an engine's container.
    async fn container(
        &self,
        engine: Engine,
    ) -> Result<(ServiceState, Option<String>, String), ComposeError> {
        let filter = format!("label=com.docker.compose.project={}", self.project(engine));
        let out = output(
            "docker",
            &[
                "ps",
                "--all",
                "--filter",
                &filter,
                "--format",
                "{{.State}}\t{{.Status}}\t{{.Image}}",
            ],
        )
        .await?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
            return Err(ComposeError::DaemonDown(first_line(&stderr)));
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| !l.trim().is_empty()) else {
            return Ok((ServiceState::Absent, None, String::new()));
        };
        let mut parts = line.split('\t');
        let state = ServiceState::parse(parts.next().unwrap_or(""));
        let status = parts.next().unwrap_or("").to_string();
        let health = ["healthy", "unhealthy", "health: starting"]
            .iter()
            .find(|h| status.contains(&format!("({h})")))
            .map(|h| h.trim_start_matches("health: ").to_string());
        Ok((state, health, status))
    }

    /// An engine's state, health and readiness right now.
    pub async fn status(&self, spec: &ServiceSpec) -> Result<ServiceStatus, ComposeError> {
        let (state, health, status) = self.container(spec.engine).await?;
        let url = spec.readiness_url();
        let (ready, detail) = if state == ServiceState::Running {
            match probe::probe(&url, Duration::from_secs(2)).await {
                Ok(_) => (true, status),
                Err(why) => (false, format!("{status}; not ready: {why}")),
            }
        } else {
            (false, status)
        };
        Ok(ServiceStatus {
            name: spec.engine.name().to_string(),
            project: self.project(spec.engine),
            image: spec
                .env()
                .get("CITADEL_IMAGE")
                .cloned()
                .unwrap_or_else(|| "(default)".into()),
            state,
            health,
            ready,
            url,
            detail,
        })
    }

    /// Waits until the engine's readiness endpoint answers 2xx; fails early when its container
    /// stops.
    pub async fn wait_ready(
        &self,
        spec: &ServiceSpec,
        timeout: Duration,
    ) -> Result<(), ComposeError> {
        let started = Instant::now();
        let url = spec.readiness_url();
        let mut checks = 0u32;
        loop {
            let last = match probe::probe(&url, Duration::from_secs(2)).await {
                Ok(_) => return Ok(()),
                Err(why) => why,
            };
            checks += 1;
            if checks % 10 == 0 {
                let (state, _, status) = self.container(spec.engine).await?;
                if matches!(
                    state,
                    ServiceState::Exited | ServiceState::Dead | ServiceState::Absent
                ) {
                    return Err(ComposeError::Command {
                        command: format!("compose up ({})", self.project(spec.engine)),
                        stderr: format!(
                            "the container is {} ({status}); see `citadel logs {}`",
                            state.as_str(),
                            spec.engine
                        ),
                    });
                }
            }
            if started.elapsed() >= timeout {
                return Err(ComposeError::NotReady {
                    engine: spec.engine,
                    url,
                    waited_s: timeout.as_secs(),
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Brings the node to the wanted services: each wanted one up, and every engine citadel ran
    /// before that is no longer wanted down (its files removed). Returns the engines started and
    /// stopped.
    pub async fn converge(&self, wanted: &[ServiceSpec]) -> Result<Converged, ComposeError> {
        let mut done = Converged::default();
        for spec in wanted {
            self.up(spec).await?;
            done.up.push(spec.engine);
        }
        for engine in Engine::ALL {
            let dir = files::service_dir(&self.state_dir, engine);
            if wanted.iter().all(|s| s.engine != engine) && dir.exists() {
                self.down(engine).await?;
                let _ = std::fs::remove_dir_all(&dir);
                done.down.push(engine);
            }
        }
        Ok(done)
    }
}

/// What a converge did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Converged {
    pub up: Vec<Engine>,
    pub down: Vec<Engine>,
}

/// The state and readiness of each service (the manifest's), for `citadel status`.
pub async fn list_services(
    driver: &Driver,
    specs: &[ServiceSpec],
) -> Result<Vec<ServiceStatus>, ComposeError> {
    let mut out = Vec::with_capacity(specs.len());
    for s in specs {
        out.push(driver.status(s).await?);
    }
    Ok(out)
}

fn classify(stderr: &str, program: &str, spec: &ServiceSpec) -> ComposeError {
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("port is already allocated") || lower.contains("address already in use") {
        ComposeError::PortTaken {
            engine: spec.engine,
            bind: spec.bind().to_string(),
            port: spec.port(),
        }
    } else if lower.contains("cannot connect to the docker daemon")
        || lower.contains("couldn't connect to docker daemon")
        || lower.contains("is the docker daemon running")
    {
        ComposeError::DaemonDown(first_line(stderr))
    } else {
        ComposeError::Command {
            command: program.to_string(),
            stderr: last_lines(stderr, 6),
        }
    }
}

fn port_free(bind: &str, port: u16) -> bool {
    let host = if bind.is_empty() { "0.0.0.0" } else { bind };
    std::net::TcpListener::bind((host, port)).is_ok()
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_string()
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn output(program: &str, args: &[&str]) -> Result<std::process::Output, ComposeError> {
    Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ComposeError::NoCompose
            } else {
                ComposeError::Spawn {
                    program: program.to_string(),
                    source,
                }
            }
        })
}

async fn succeeds(program: &str, args: &[&str]) -> bool {
    matches!(output(program, args).await, Ok(o) if o.status.success())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_failures_become_clear_errors() {
        let spec = ServiceSpec::new(Engine::Vllm);
        let e = classify(
            "Error starting userland proxy: listen tcp4 127.0.0.1:8201: bind: address already in use",
            "up",
            &spec,
        );
        assert!(
            matches!(e, ComposeError::PortTaken { port: 8201, .. }),
            "{e}"
        );
        let e = classify(
            "Couldn't connect to Docker daemon at http+docker://localhost",
            "up",
            &spec,
        );
        assert!(matches!(e, ComposeError::DaemonDown(_)) && e.is_retryable());
        let e = classify("pull access denied for x", "up", &spec);
        assert!(e.to_string().contains("pull access denied"));
    }

    #[test]
    fn a_held_port_is_seen_as_taken() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        assert!(!port_free("127.0.0.1", port));
        drop(held);
        assert!(port_free("127.0.0.1", port));
    }
}
