//! The host's operating system, its package manager and its container runtime, each behind a
//! small interface with one implementation per OS family ([`PackageManager`], [`ContainerRuntime`]).
//! Detection looks at files and `PATH` only: it never runs a program, never installs anything and
//! never talks to a daemon, so it is fast and cannot hang.

use std::path::{Path, PathBuf};

use serde::Serialize;

/// The operating system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OsInfo {
    /// `linux`, `macos`, `windows` (Rust's `std::env::consts::OS`).
    pub os: String,
    pub arch: String,
    /// The distribution's `ID` (`debian`, `ubuntu`), when /etc/os-release says.
    pub distro: Option<String>,
    pub distro_version: Option<String>,
    pub pretty_name: Option<String>,
    pub kernel: Option<String>,
}

impl OsInfo {
    pub fn detect() -> Self {
        let release = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
        let kernel = rustix::system::uname()
            .release()
            .to_string_lossy()
            .trim()
            .to_string();
        Self {
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            distro: os_release_field(&release, "ID"),
            distro_version: os_release_field(&release, "VERSION_ID"),
            pretty_name: os_release_field(&release, "PRETTY_NAME"),
            kernel: (!kernel.is_empty()).then_some(kernel),
        }
    }
}

/// One `KEY=value` of /etc/os-release, unquoted.
pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
        })
        .filter(|v| !v.is_empty())
}

/// A system package manager.
pub trait PackageManager: std::fmt::Debug + Send + Sync {
    /// `apt`, `dnf`, `brew`, ...
    fn name(&self) -> &'static str;
    /// The command line that installs `package` (shown to the user; never run by detection).
    fn install_command(&self, package: &str) -> Vec<String>;
}

/// A package manager known by the program that drives it.
#[derive(Debug, Clone, Copy)]
struct Known {
    name: &'static str,
    program: &'static str,
    install: &'static [&'static str],
}

impl PackageManager for Known {
    fn name(&self) -> &'static str {
        self.name
    }

    fn install_command(&self, package: &str) -> Vec<String> {
        let mut cmd: Vec<String> = std::iter::once(self.program)
            .chain(self.install.iter().copied())
            .map(String::from)
            .collect();
        cmd.push(package.into());
        cmd
    }
}

/// The package managers of this OS family, most specific first.
fn candidates() -> &'static [Known] {
    #[cfg(target_os = "linux")]
    const LIST: &[Known] = &[
        Known {
            name: "apt",
            program: "apt-get",
            install: &["install", "-y"],
        },
        Known {
            name: "dnf",
            program: "dnf",
            install: &["install", "-y"],
        },
        Known {
            name: "yum",
            program: "yum",
            install: &["install", "-y"],
        },
        Known {
            name: "pacman",
            program: "pacman",
            install: &["-S", "--noconfirm"],
        },
        Known {
            name: "zypper",
            program: "zypper",
            install: &["install", "-y"],
        },
        Known {
            name: "apk",
            program: "apk",
            install: &["add"],
        },
    ];
    #[cfg(target_os = "macos")]
    const LIST: &[Known] = &[Known {
        name: "brew",
        program: "brew",
        install: &["install"],
    }];
    #[cfg(target_os = "windows")]
    const LIST: &[Known] = &[
        Known {
            name: "winget",
            program: "winget",
            install: &["install", "-e", "--id"],
        },
        Known {
            name: "choco",
            program: "choco",
            install: &["install", "-y"],
        },
    ];
    #[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
    const LIST: &[Known] = &[];
    LIST
}

/// The first package manager of this OS whose program is on `PATH`.
pub fn package_manager() -> Option<Box<dyn PackageManager>> {
    candidates()
        .iter()
        .find(|k| find_program(k.program).is_some())
        .map(|k| Box::new(*k) as Box<dyn PackageManager>)
}

/// What is known about Docker on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DockerInfo {
    /// The `docker` client program.
    pub cli: Option<PathBuf>,
    /// Where the daemon listens, when its socket exists.
    pub socket: Option<String>,
    /// `docker compose` (v2 plugin) or `docker-compose` (v1), when either is installed.
    pub compose: Option<String>,
    /// The NVIDIA container runtime, which GPU services need.
    pub nvidia_runtime: bool,
}

impl DockerInfo {
    /// The client and the daemon's socket are both there.
    pub fn usable(&self) -> bool {
        self.cli.is_some() && self.socket.is_some()
    }
}

/// A container runtime's detection, per OS.
pub trait ContainerRuntime: std::fmt::Debug + Send + Sync {
    fn detect(&self) -> DockerInfo;
}

/// Docker on Linux and macOS: a Unix socket (`DOCKER_HOST=unix://…` or the usual places).
#[derive(Debug, Default)]
pub struct UnixDocker;

impl ContainerRuntime for UnixDocker {
    fn detect(&self) -> DockerInfo {
        let mut sockets: Vec<PathBuf> = Vec::new();
        if let Ok(host) = std::env::var("DOCKER_HOST") {
            if let Some(p) = host.strip_prefix("unix://") {
                sockets.push(p.into());
            }
        }
        sockets.push("/var/run/docker.sock".into());
        sockets.push("/run/docker.sock".into());
        if let Some(home) = std::env::var_os("HOME") {
            sockets.push(Path::new(&home).join(".docker/run/docker.sock"));
        }
        if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR") {
            sockets.push(Path::new(&run).join("docker.sock"));
        }
        let socket = sockets
            .into_iter()
            .find(|p| p.exists())
            .map(|p| format!("unix://{}", p.display()));
        let mut plugins: Vec<PathBuf> = [
            "/usr/libexec/docker/cli-plugins/docker-compose",
            "/usr/lib/docker/cli-plugins/docker-compose",
            "/usr/local/lib/docker/cli-plugins/docker-compose",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        if let Some(home) = std::env::var_os("HOME") {
            plugins.push(Path::new(&home).join(".docker/cli-plugins/docker-compose"));
        }
        let compose = if plugins.iter().any(|p| p.exists()) {
            Some("docker compose".to_string())
        } else {
            find_program("docker-compose").map(|_| "docker-compose".to_string())
        };
        DockerInfo {
            cli: find_program("docker"),
            socket,
            compose,
            nvidia_runtime: find_program("nvidia-container-runtime").is_some(),
        }
    }
}

/// Docker Desktop on Windows: a named pipe.
#[derive(Debug, Default)]
pub struct WindowsDocker;

impl ContainerRuntime for WindowsDocker {
    fn detect(&self) -> DockerInfo {
        let pipe = Path::new(r"\\.\pipe\docker_engine");
        DockerInfo {
            cli: find_program("docker"),
            socket: pipe
                .exists()
                .then(|| "npipe:////./pipe/docker_engine".into()),
            compose: find_program("docker-compose").map(|_| "docker-compose".into()),
            nvidia_runtime: false,
        }
    }
}

/// The container runtime detector of this OS.
pub fn container_runtime() -> Box<dyn ContainerRuntime> {
    if cfg!(windows) {
        Box::new(WindowsDocker)
    } else {
        Box::new(UnixDocker)
    }
}

/// `program` in a `PATH` folder, as an executable file.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).find_map(|dir| {
        let candidate = dir.join(program);
        is_executable(&candidate).then_some(candidate)
    })
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_release_parses() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\nVERSION_ID=\"12\"\n";
        assert_eq!(os_release_field(text, "ID").as_deref(), Some("debian"));
        assert_eq!(os_release_field(text, "VERSION_ID").as_deref(), Some("12"));
        assert_eq!(
            os_release_field(text, "PRETTY_NAME").as_deref(),
            Some("Debian GNU/Linux 12 (bookworm)")
        );
        assert_eq!(os_release_field(text, "NAME"), None);
        let os = OsInfo::detect();
        assert_eq!(os.os, std::env::consts::OS);
    }

    #[test]
    fn package_managers_build_install_commands() {
        let apt = Known {
            name: "apt",
            program: "apt-get",
            install: &["install", "-y"],
        };
        assert_eq!(
            apt.install_command("redis-server"),
            ["apt-get", "install", "-y", "redis-server"]
        );
        // This machine is Debian: apt-get is on PATH.
        if Path::new("/usr/bin/apt-get").exists() && cfg!(target_os = "linux") {
            assert_eq!(package_manager().unwrap().name(), "apt");
        }
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-not-a-program-citadel").is_none());
        let docker = container_runtime().detect();
        assert_eq!(
            docker.usable(),
            docker.cli.is_some() && docker.socket.is_some()
        );
    }
}
