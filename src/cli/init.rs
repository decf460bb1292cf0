//! `citadel init`: enrols this node. With a control plane it runs the device authorization of
//! docs/wire-format.md#device-authorization (start → show the user code and URL → poll, honouring `slow_down` and expiry), then
//! writes the node's credentials (`DATA_DIR/node-token`, mode 0600), its identity
//! (`DATA_DIR/identity.json`, 0600: node id, name, organization, control plane), a fresh mesh key
//! (`DATA_DIR/mesh.key`, 0600, docs/mesh.md) and the manifest; `--offline` writes an identity and a
//! manifest with no control plane. It refuses to replace an existing manifest or identity
//! without `--force`, and never prints the token.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use super::remote::Plane;
use crate::manifest::{self, Enrolment};

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The control plane to join, e.g. http://10.0.0.5:7411 (a `citadel nexus serve`).
    #[arg(
        long,
        env = "CITADEL_NEXUS_URL",
        value_name = "URL",
        required_unless_present = "offline"
    )]
    control_plane: Option<String>,
    /// Write a manifest with no control plane (`citadel work` then serves an embedded one);
    /// wins over a control plane URL set in the environment.
    #[arg(long)]
    offline: bool,
    /// This node's name (default: the host name).
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Capability tags, repeatable or comma separated.
    #[arg(long = "tag", value_delimiter = ',', value_name = "TAG")]
    tags: Vec<String>,
    /// Where to write the manifest (default: DATA_DIR/citadel.yaml).
    #[arg(long, env = "CITADEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Replace an existing manifest and identity (the old credentials are lost).
    #[arg(long)]
    force: bool,
}

pub async fn run(args: InitArgs, data_dir: &Path) -> anyhow::Result<()> {
    let manifest_path = crate::config::config_path(args.config.as_deref(), data_dir).0;
    let identity_path = data_dir.join("identity.json");
    if !args.force {
        for p in [&manifest_path, &identity_path] {
            if p.exists() {
                bail!(
                    "this node is already initialised ({} exists); `citadel init --force` replaces \
                     its manifest and identity (the old credentials are lost)",
                    p.display()
                );
            }
        }
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let name = args.name.clone().unwrap_or_else(crate::node::host_name);
    if name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let instance = crate::node::instance_id(data_dir)?;
    let (identity, enrolment) = match (&args.control_plane, args.offline) {
        (Some(url), false) => {
            let url = url.trim_end_matches('/').to_string();
            let creds = authorize(&url, &name, &instance).await?;
            let token = creds["access_token"]
                .as_str()
                .filter(|t| !t.is_empty())
                .context("the control plane approved the node but sent no access_token")?;
            let token_file = data_dir.join("node-token");
            crate::paths::write_private(&token_file, format!("{token}\n").as_bytes())?;
            let identity = json!({
                "node_id": creds["node_id"],
                "node_name": name,
                // The organization the control plane approved it into: the terminal service
                // reads its tokens' hashes with it.
                "org_id": creds["org"],
                "control_plane": url,
                "enrolled_at": now_rfc3339(),
            });
            (identity, Some(Enrolment { url, token_file }))
        }
        _ => {
            let identity = json!({
                "node_id": format!("local-{instance}"),
                "node_name": name,
                // The embedded control plane's organization.
                "org_id": citadel_nexus::auth::DEFAULT_ORG,
                "control_plane": null,
                "enrolled_at": now_rfc3339(),
            });
            (identity, None)
        }
    };
    let text = manifest::initial(&name, &args.tags, enrolment.as_ref());
    crate::config::write_manifest(&manifest_path, &text)?;
    let pretty = serde_json::to_string_pretty(&identity)? + "\n";
    crate::paths::write_private(&identity_path, pretty.as_bytes())?;
    // A new identity, a new mesh key (the plane binds a key to the node that registered it).
    crate::mesh::key::create(data_dir).context("creating the mesh key")?;
    println!(
        "node {name} initialised ({}): manifest {}, identity {}",
        identity["node_id"].as_str().unwrap_or(""),
        manifest_path.display(),
        identity_path.display()
    );
    println!("next: add services to the manifest, then `citadel up` (or `citadel work`)");
    Ok(())
}

/// The device authorization flow; returns the token response's body.
async fn authorize(url: &str, name: &str, instance: &str) -> anyhow::Result<Value> {
    let plane = Plane::anonymous(url)?;
    let machine_id = std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| instance.to_string());
    let start = plane
        .call(
            Method::POST,
            "/api/fabric/device-auth/start",
            Some(&json!({
                "client_id": "citadel",
                "client_version": env!("CARGO_PKG_VERSION"),
                "hostname": name,
                "machine_id": machine_id,
            })),
        )
        .await
        .context("starting the device authorization")?;
    let field = |k: &str| {
        start[k]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("the control plane's answer has no `{k}`"))
    };
    let device_code = field("device_code")?;
    let user_code = field("user_code")?;
    let uri = start["verification_uri_complete"]
        .as_str()
        .or(start["verification_uri"].as_str())
        .unwrap_or(url)
        .to_string();
    let expires_in = start["expires_in"].as_u64().unwrap_or(600);
    let mut interval = Duration::from_secs(start["interval"].as_u64().unwrap_or(5).max(1));
    println!("To add this node, approve it on the control plane:");
    println!("    code: {user_code}");
    println!("    open: {uri}");
    println!("    or run there: citadel nexus approve {user_code}");
    println!("waiting for approval (the code expires in {expires_in}s)...");
    let _ = std::io::stdout().flush();
    let deadline = Instant::now() + Duration::from_secs(expires_in);
    let body = json!({
        "device_code": device_code,
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
    });
    loop {
        tokio::time::sleep(interval).await;
        let (status, text) = match plane
            .send(Method::POST, "/api/fabric/device-auth/token", Some(&body))
            .await
        {
            Ok(r) => r,
            Err(e) if Instant::now() < deadline => {
                tracing::warn!(error = %format!("{e:#}"), "polling the control plane failed; trying again");
                continue;
            }
            Err(e) => return Err(e),
        };
        let answer: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(answer);
        }
        match answer["error"].as_str().unwrap_or("") {
            "authorization_pending" => {}
            "slow_down" => {
                interval += Duration::from_secs(5);
                tracing::info!(
                    interval_s = interval.as_secs(),
                    "the control plane asked to poll slower"
                );
            }
            "expired_token" => bail!(
                "the code {user_code} expired before it was approved; run `citadel init` again"
            ),
            "access_denied" => bail!("the control plane denied this node (code {user_code})"),
            other => bail!("the control plane refused the device authorization: {status} {other}"),
        }
        if Instant::now() >= deadline {
            bail!("the code {user_code} expired before it was approved; run `citadel init` again");
        }
    }
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
