//! The compose files embedded in the binary and their materialisation into the node's state
//! directory (`STATE/services/<engine>/`: `compose.yml`, `gpu.yml` when the GPU is reserved, and
//! `.env` with the manifest's image, port, bind address and model). The files are rewritten on
//! every converge so an upgraded binary brings its own files. Nothing here runs Docker.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::{ComposeError, Engine, ServiceSpec};

/// The embedded compose file of an engine (its one service is called `engine`).
pub fn compose_file(engine: Engine) -> &'static str {
    match engine {
        Engine::Vllm => include_str!("../files/vllm.yml"),
        Engine::Ollama => include_str!("../files/ollama.yml"),
        Engine::Llamacpp => include_str!("../files/llamacpp.yml"),
        Engine::Lmstudio => include_str!("../files/lmstudio.yml"),
    }
}

/// The overlay that reserves the NVIDIA GPUs for the `engine` service.
pub const GPU_OVERLAY: &str = include_str!("../files/gpu.yml");

/// A service's files on disk, in the order compose takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Materialised {
    pub dir: PathBuf,
    pub compose_files: Vec<PathBuf>,
    pub env_file: PathBuf,
}

/// The folder of an engine's files under `state_dir`.
pub fn service_dir(state_dir: &Path, engine: Engine) -> PathBuf {
    state_dir.join("services").join(engine.name())
}

/// Writes the service's files (each atomically: a temp file, then a rename).
pub fn materialise(state_dir: &Path, spec: &ServiceSpec) -> Result<Materialised, ComposeError> {
    let dir = service_dir(state_dir, spec.engine);
    let err = |source| ComposeError::Files {
        path: dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let base = dir.join("compose.yml");
    write_atomic(&base, compose_file(spec.engine).as_bytes()).map_err(err)?;
    let mut compose_files = vec![base];
    let gpu = dir.join("gpu.yml");
    if spec.uses_gpu() {
        write_atomic(&gpu, GPU_OVERLAY.as_bytes()).map_err(err)?;
        compose_files.push(gpu);
    } else if gpu.exists() {
        std::fs::remove_file(&gpu).map_err(err)?;
    }
    let env_file = dir.join(".env");
    let mut env = String::from("# Written by citadel from citadel.yaml; edits are overwritten.\n");
    for (k, v) in spec.env() {
        env.push_str(&format!("{k}={}\n", v.replace('\n', " ")));
    }
    write_atomic(&env_file, env.as_bytes()).map_err(err)?;
    Ok(Materialised {
        dir,
        compose_files,
        env_file,
    })
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_engine_file_publishes_its_port_and_has_a_health_check() {
        for e in Engine::ALL {
            let f = compose_file(e);
            assert!(
                f.contains(&format!("CITADEL_PORT:-{}", e.default_port())),
                "{e}"
            );
            assert!(
                f.contains("healthcheck:") && f.contains(e.readiness_path()) || e == Engine::Ollama,
                "{e}"
            );
            assert!(f.contains("volumes:"), "{e}: cache volume");
        }
        assert!(GPU_OVERLAY.contains("driver: nvidia"));
    }

    #[test]
    fn materialise_writes_the_env_and_the_gpu_overlay_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = ServiceSpec::new(Engine::Ollama);
        spec.gpu = Some(true);
        spec.image = Some("local/standin:1".into());
        let m = materialise(dir.path(), &spec).unwrap();
        assert_eq!(m.compose_files.len(), 2);
        let env = std::fs::read_to_string(&m.env_file).unwrap();
        assert!(
            env.contains("CITADEL_IMAGE=local/standin:1") && env.contains("CITADEL_PORT=11434")
        );
        spec.gpu = Some(false);
        let m = materialise(dir.path(), &spec).unwrap();
        assert_eq!(m.compose_files.len(), 1);
        assert!(!m.dir.join("gpu.yml").exists());
    }
}
