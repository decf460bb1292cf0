//! The compose services on the real Docker engine. No image can be pulled here, so the tests
//! build a stand-in engine image locally (`docker import` of a root filesystem holding the static
//! busybox: its httpd answers every engine's readiness path on every engine's container port, and
//! its `sh`/`wget` run the compose files' health checks), and the manifest points the engines'
//! `image:` at it. Without Docker the tests skip with a reason, except under CI=true, where a
//! missing Docker is a failure.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};

use super::cli::{citadel, run};
use crate::support::plane::{eventually, free_port, raw, Plane, BIN};

const STANDIN: &str = "citadel-standin:test";

/// Whether Docker (daemon, compose, busybox for the stand-in) is here; `false` (with the reason
/// printed) outside CI, a panic under CI=true.
fn docker_ready() -> bool {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let r = READY.get_or_init(build_standin);
    match r {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true and the Docker tests cannot run: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED: the compose tests need Docker: {why}");
            false
        }
    }
}

fn sh(cmd: &str) -> Result<String, String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd}`: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn build_standin() -> Result<(), String> {
    sh("docker version --format '{{.Server.Version}}'")?;
    sh("docker compose version || docker-compose version")?;
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("no static busybox (apt-get install busybox-static)")?;
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let r = root.path();
    for d in ["bin", "www/v1", "www/api"] {
        std::fs::create_dir_all(r.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(busybox, r.join("bin/busybox")).map_err(|e| e.to_string())?;
    for applet in ["sh", "wget", "httpd", "sleep"] {
        std::os::unix::fs::symlink("busybox", r.join("bin").join(applet))
            .map_err(|e| e.to_string())?;
    }
    std::fs::write(r.join("www/health"), "ok\n").unwrap();
    std::fs::write(
        r.join("www/v1/models"),
        "{\"object\":\"list\",\"data\":[]}\n",
    )
    .unwrap();
    std::fs::write(r.join("www/api/tags"), "{\"models\":[]}\n").unwrap();
    // Every engine's container port: vllm 8000, llama.cpp 8080, ollama 11434, LM Studio 1234. The
    // shell stays PID 1 and exits on SIGTERM, so `docker stop` does not wait its 10 s grace.
    std::fs::write(
        r.join("standin.sh"),
        "trap 'exit 0' TERM INT\n\
         for p in 8000 8080 11434 1234; do /bin/busybox httpd -p $p -h /www; done\n\
         while :; do /bin/busybox sleep 3600 & wait $!; done\n",
    )
    .unwrap();
    sh(&format!(
        "tar -C {} -c . | docker import --change 'ENTRYPOINT [\"/bin/sh\", \"/standin.sh\"]' - {STANDIN}",
        r.display()
    ))?;
    Ok(())
}

/// A data directory with a manifest and its own compose project prefix; brings its projects
/// down when dropped.
struct Node {
    _tmp: tempfile::TempDir,
    data: std::path::PathBuf,
    prefix: String,
}

impl Node {
    fn new(tag: &str) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let prefix = format!("citadeltest{}{tag}", std::process::id());
        let node = Self {
            _tmp: tmp,
            data,
            prefix,
        };
        let (ok, _, err) = run(&mut node.cmd(&["init", "--offline", "--name", tag]));
        assert!(ok, "{err}");
        node
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = citadel(&self.data);
        c.env("CITADEL_COMPOSE_PREFIX", &self.prefix).args(args);
        c
    }

    fn set_services(&self, services: &str) {
        let path = self.data.join("citadel.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let start = text.find("services:").unwrap();
        let end = start + text[start..].find("\n\n").unwrap();
        std::fs::write(
            &path,
            format!("{}services:\n{services}{}", &text[..start], &text[end..]),
        )
        .unwrap();
    }

    fn ls(&self) -> Vec<Value> {
        let (ok, out, err) = run(&mut self.cmd(&["services", "ls", "--json"]));
        assert!(ok, "{err}");
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    fn containers(&self, engine: &str) -> String {
        sh(&format!(
            "docker ps -a --filter label=com.docker.compose.project={}-{engine} --format '{{{{.State}}}}'",
            self.prefix
        ))
        .unwrap()
        .trim()
        .to_string()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for e in ["vllm", "ollama", "llamacpp", "lmstudio"] {
            let _ = run(&mut self.cmd(&["down", e]));
        }
    }
}

fn entry(name: &str, port: u16) -> String {
    format!("  - name: {name}\n    image: {STANDIN}\n    port: {port}\n    gpu: false\n")
}

#[test]
fn up_converges_a_standin_engine_and_down_stops_it() {
    if !docker_ready() {
        return;
    }
    let node = Node::new("up");
    let port = free_port();
    node.set_services(&entry("vllm", port));
    // `citadel up`: converge, then work (on the embedded control plane: nothing else is set).
    let log = node.data.join("up.log");
    let mut up = KillOnDrop(
        node.cmd(&["up", "--ready-timeout", "60s"])
            .stdout(std::fs::File::create(node.data.join("up.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually(
        Duration::from_secs(90),
        "citadel up converges and starts working",
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .contains("working: node")
        },
    );
    let table = std::fs::read_to_string(node.data.join("up.out")).unwrap();
    assert!(table.contains("vllm") && table.contains("ready"), "{table}");
    let r = raw(port, "GET", "/health", &[], None);
    assert_eq!(r.status, 200);
    let (ok, out, err) = run(&mut node.cmd(&["submit", "--wait", "echo", "msg=hi"]));
    assert!(ok && out.contains("\"msg\":\"hi\""), "{out}{err}");
    // `citadel status` asks the running worker, which reports the manifest's services.
    let (ok, out, err) = run(&mut node.cmd(&["status"]));
    assert!(ok, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("service") && l.contains("vllm"))
        .unwrap_or_else(|| panic!("no vllm service in citadel status:\n{out}"));
    assert!(
        line.contains("running") && line.contains("ready at"),
        "{line}"
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(up.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    assert!(
        up.0.wait().unwrap().success(),
        "citadel up exits 0 on SIGTERM"
    );
    let ls = node.ls();
    assert_eq!(ls[0]["name"], "vllm");
    assert_eq!(ls[0]["state"], "running");
    assert_eq!(ls[0]["ready"], true);
    assert_eq!(ls[0]["project"], format!("{}-vllm", node.prefix));
    // Docker's own health check (the compose file's) passes in the stand-in too.
    eventually(
        Duration::from_secs(30),
        "docker reports the vllm service healthy",
        || node.ls()[0]["health"] == "healthy",
    );
    let (ok, _, err) = run(&mut node.cmd(&["logs", "vllm", "--tail", "5"]));
    assert!(ok, "{err}");

    // The manifest now wants ollama instead: up starts it and stops vllm.
    let port2 = free_port();
    node.set_services(&entry("ollama", port2));
    let (ok, out, err) = run(&mut node.cmd(&["up", "--no-work", "--ready-timeout", "60s"]));
    assert!(ok, "{out}{err}");
    assert!(err.contains("stopped vllm"), "{err}");
    assert_eq!(node.containers("vllm"), "");
    assert_eq!(raw(port2, "GET", "/api/tags", &[], None).status, 200);

    let (ok, out, err) = run(&mut node.cmd(&["down"]));
    assert!(ok && out.contains("stopped ollama"), "{out}{err}");
    assert_eq!(node.containers("ollama"), "");
    assert_eq!(node.ls()[0]["state"], "absent");
}

#[test]
fn a_taken_port_and_an_unknown_service_are_clear_errors() {
    if !docker_ready() {
        return;
    }
    let node = Node::new("port");
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    node.set_services(&entry("llamacpp", port));
    let (ok, _, err) = run(&mut node.cmd(&["up", "--no-work", "--ready-timeout", "20s"]));
    assert!(
        !ok && err.contains(&format!("port {port}")) && err.contains("taken"),
        "{err}"
    );
    assert_eq!(node.containers("llamacpp"), "");
    let (ok, _, err) = run(&mut node.cmd(&["logs", "mistral"]));
    assert!(!ok && err.contains("unknown service \"mistral\""), "{err}");
    let (ok, _, err) = run(&mut node.cmd(&["down", "mistral"]));
    assert!(!ok && err.contains("unknown service"), "{err}");
}

#[test]
fn apply_device_config_through_a_worker_updates_the_manifest_and_converges() {
    if !docker_ready() {
        return;
    }
    let node = Node::new("apply");
    let tmp = tempfile::tempdir().unwrap();
    let plane = Plane::start(&tmp.path().join("plane"));
    let mut worker = Command::new(BIN);
    worker
        .args(["--data-dir"])
        .arg(&node.data)
        .args([
            "work",
            "--transport",
            "nexus",
            "--nexus-url",
            &plane.url(),
            "--nexus-token",
            &plane.token,
        ])
        .env("CITADEL_COMPOSE_PREFIX", &node.prefix)
        .env_remove("CITADEL_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut worker = KillOnDrop(worker.spawn().unwrap());

    let port = free_port();
    let id = plane.submit(json!({"type": "APPLY_DEVICE_CONFIG", "payload": {
        "deviceName": "wizard-node", "customTags": ["lab"], "autoStartServices": true,
        "services": [{"name": "ollama", "image": STANDIN, "port": port, "gpu": false}],
    }}));
    let mut job = Value::Null;
    eventually(
        Duration::from_secs(120),
        "the device config job succeeds",
        || {
            job = plane.json("GET", &format!("/api/v1/jobs/{id}"), None);
            matches!(job["state"].as_str(), Some("succeeded" | "dead" | "failed"))
        },
    );
    assert_eq!(job["state"], "succeeded", "{job}");
    let result = &job["result"];
    assert_eq!(result["services"]["up"], json!(["ollama"]), "{result}");
    let paths: Vec<&str> = result["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["path"].as_str().unwrap())
        .collect();
    assert!(
        paths.contains(&"node.name") && paths.contains(&"services[0].port"),
        "{paths:?}"
    );
    let manifest = std::fs::read_to_string(node.data.join("citadel.yaml")).unwrap();
    assert!(manifest.contains("wizard-node"), "{manifest}");
    assert_eq!(raw(port, "GET", "/api/tags", &[], None).status, 200);

    // An unknown service is a permanent failure: dead-lettered, the manifest untouched.
    let bad =
        plane.submit(json!({"type": "APPLY_DEVICE_CONFIG", "payload": {"services": ["tgi"]}}));
    eventually(
        Duration::from_secs(60),
        "the bad config is dead-lettered",
        || {
            job = plane.json("GET", &format!("/api/v1/jobs/{bad}"), None);
            job["state"] == "dead"
        },
    );
    assert!(job["error"].as_str().unwrap_or("").contains("tgi"), "{job}");
    assert_eq!(
        std::fs::read_to_string(node.data.join("citadel.yaml")).unwrap(),
        manifest
    );
    worker.0.kill().unwrap();
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
