//! Platform detection: what this machine is and can do — GPUs ([`gpu`], NVML), the OS, package
//! manager and Docker ([`host`]), CPU, memory, load and disk ([`system`]), the inference engines
//! answering on their default loopback ports (docs/wire-format.md#llm-engines), and the capability tags derived from
//! all of it (`gpu:<model>`, `vram:<N>gb`, `engine:<name>`, `os:<os>`, `arch:<arch>`). It feeds
//! the status message, the heartbeat and `citadel platform`. Detection only reads; it must never
//! change the machine, and a missing driver or daemon is a fact to report, never an error.

pub mod gpu;
pub mod host;
pub mod system;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

pub use gpu::{Gpu, GpuReport};
pub use host::{DockerInfo, OsInfo};
pub use system::SystemInfo;

/// The inference engines and the loopback port each listens on by default (docs/wire-format.md#llm-engines).
pub const ENGINE_PORTS: &[(&str, u16)] = &[
    ("vllm", 8201),
    ("llamacpp", 8200),
    ("ollama", 11434),
    ("sglang", 30000),
];

/// How long one engine port probe may take.
const ENGINE_PROBE: Duration = Duration::from_millis(200);

/// Everything detection found.
#[derive(Debug, Clone, Serialize)]
pub struct Platform {
    pub os: OsInfo,
    pub system: SystemInfo,
    pub gpu: GpuReport,
    pub package_manager: Option<String>,
    pub docker: DockerInfo,
    /// Engines accepting connections on their default ports now.
    pub engines: Vec<String>,
    pub tags: Vec<String>,
}

/// Detects everything; `data_dir` picks the file system whose space is reported.
pub async fn detect(data_dir: &Path) -> Platform {
    let dir = data_dir.to_path_buf();
    let blocking = tokio::task::spawn_blocking(move || {
        (
            OsInfo::detect(),
            system::snapshot(&dir),
            gpu::detect(),
            host::package_manager().map(|p| p.name().to_string()),
            host::container_runtime().detect(),
        )
    });
    let engines = engines_listening().await;
    let (os, system, gpu, package_manager, docker) = blocking.await.unwrap_or_else(|e| {
        // A panic inside a detector must not take the caller down.
        tracing::error!(error = %e, "platform detection panicked");
        (
            OsInfo::detect(),
            system::snapshot(Path::new(".")),
            GpuReport {
                driver: None,
                cuda: None,
                gpus: Vec::new(),
                error: Some(format!("GPU detection failed: {e}")),
            },
            None,
            DockerInfo::default(),
        )
    });
    let tags = tags(&os, &gpu, &engines);
    Platform {
        os,
        system,
        gpu,
        package_manager,
        docker,
        engines,
        tags,
    }
}

/// The engines whose default loopback port accepts a TCP connection, probed concurrently.
pub async fn engines_listening() -> Vec<String> {
    let probes = ENGINE_PORTS.iter().map(|(name, port)| async move {
        let addr = SocketAddr::from(([127, 0, 0, 1], *port));
        let open = tokio::time::timeout(ENGINE_PROBE, tokio::net::TcpStream::connect(addr))
            .await
            .is_ok_and(|r| r.is_ok());
        open.then(|| (*name).to_string())
    });
    futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// The capability tags, sorted and without duplicates.
pub fn tags(os: &OsInfo, gpu: &GpuReport, engines: &[String]) -> Vec<String> {
    let mut tags = vec![format!("os:{}", os.os), format!("arch:{}", os.arch)];
    for g in &gpu.gpus {
        tags.push(format!("gpu:{}", slug(&g.name)));
        if let Some(gb) = g.vram_gb() {
            tags.push(format!("vram:{gb}gb"));
        }
    }
    tags.extend(engines.iter().map(|e| format!("engine:{e}")));
    tags.sort();
    tags.dedup();
    tags
}

/// `NVIDIA H100 80GB HBM3` → `nvidia-h100-80gb-hbm3`.
pub fn slug(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(name: &str, bytes: u64) -> Gpu {
        Gpu {
            index: 0,
            name: name.into(),
            uuid: None,
            memory_total_bytes: Some(bytes),
            memory_used_bytes: None,
            utilization_percent: None,
            memory_utilization_percent: None,
            temperature_c: None,
            power_watts: None,
        }
    }

    #[test]
    fn tags_describe_gpus_engines_and_the_os() {
        let os = OsInfo {
            os: "linux".into(),
            arch: "x86_64".into(),
            distro: None,
            distro_version: None,
            pretty_name: None,
            kernel: None,
        };
        let report = GpuReport {
            driver: Some("550.54".into()),
            cuda: Some("12.4".into()),
            gpus: vec![
                gpu("NVIDIA H100 80GB HBM3", 85_520_809_984),
                gpu("NVIDIA H100 80GB HBM3", 85_520_809_984),
            ],
            error: None,
        };
        assert_eq!(
            tags(&os, &report, &["vllm".into()]),
            [
                "arch:x86_64",
                "engine:vllm",
                "gpu:nvidia-h100-80gb-hbm3",
                "os:linux",
                "vram:80gb"
            ]
        );
        assert_eq!(slug("  GeForce RTX 4090 (Ti) "), "geforce-rtx-4090-ti");
    }

    #[tokio::test]
    async fn detection_reports_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        let p = detect(dir.path()).await;
        assert!(p.tags.contains(&format!("os:{}", std::env::consts::OS)));
        assert!(p.system.cpu_count >= 1);
        if p.gpu.driver.is_none() {
            assert!(p.gpu.error.is_some());
            assert!(!p.tags.iter().any(|t| t.starts_with("gpu:")));
        }
    }
}
