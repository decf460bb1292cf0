//! `citadel status` (the running worker's status, read from its status server, whose address is
//! in DATA_DIR/status.addr) and `citadel platform` (this machine's detection as JSON, no worker
//! needed). Output only; these commands never change the worker.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Args;
use serde_json::Value;

use crate::format;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the whole status message as JSON (what the heartbeat sends).
    #[arg(long)]
    json: bool,
    /// Ask this status server instead of the one in DATA_DIR/status.addr.
    #[arg(long, value_name = "HOST:PORT")]
    addr: Option<String>,
}

#[derive(Debug, Args)]
pub struct PlatformArgs {
    /// Print only the capability tags, one a line.
    #[arg(long)]
    tags: bool,
}

pub async fn platform(args: PlatformArgs, data_dir: &Path) -> anyhow::Result<()> {
    let p = crate::platform::detect(data_dir).await;
    if args.tags {
        for t in &p.tags {
            println!("{t}");
        }
    } else {
        println!("{}", serde_json::to_string_pretty(&p)?);
    }
    Ok(())
}

/// The running worker's status server: `explicit`, else the address in DATA_DIR/status.addr.
pub(super) fn worker_addr(explicit: Option<String>, data_dir: &Path) -> anyhow::Result<String> {
    let file = crate::status::server::addr_file(data_dir);
    match explicit {
        Some(a) => Ok(a),
        None => match std::fs::read_to_string(&file) {
            Ok(a) if !a.trim().is_empty() => Ok(a.trim().to_string()),
            _ => bail!(
                "no citadel worker is running on {} (no {}); start one with `citadel work`, \
                 or pass --data-dir / --addr",
                data_dir.display(),
                file.display()
            ),
        },
    }
}

pub async fn status(args: StatusArgs, data_dir: &Path) -> anyhow::Result<()> {
    let file = crate::status::server::addr_file(data_dir);
    let addr = worker_addr(args.addr, data_dir)?;
    let http =
        crate::handlers::http_client(Duration::from_secs(2)).context("building the HTTP client")?;
    let url = format!("http://{addr}/status");
    let resp = match http.get(&url).timeout(Duration::from_secs(10)).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() => bail!(
            "no citadel worker is running on {}: its status server {addr} does not answer \
             (the worker stopped without removing {})",
            data_dir.display(),
            file.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("asking {url}")),
    };
    if !resp.status().is_success() {
        bail!("{url} answered {}", resp.status());
    }
    let msg: Value = resp
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&msg)?);
    } else {
        print_summary(&msg);
    }
    Ok(())
}

fn print_summary(m: &Value) {
    print_worker(m);
    print_system(&m["system"]);
    print_gpus(&m["gpu"], &m["system"]);
    let tags: Vec<String> = m["capabilities"]["tags"]
        .as_array()
        .map(|a| a.iter().map(text).collect())
        .unwrap_or_default();
    println!("tags       {}", tags.join(" "));
    if let Some(streams) = m["routing"]["streams"].as_array() {
        let names: Vec<String> = streams.iter().map(|s| text(&s["stream"])).collect();
        println!("streams    {}", names.join(" "));
    }
    print_services(&m["services"]);
}

/// A value as shown: a string as is, null as `-`, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A count (0 when absent).
fn count(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Bytes in GiB with one decimal (`-` when absent).
fn gib(v: &Value) -> String {
    v.as_u64().map_or("-".to_string(), |b| {
        format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
    })
}

/// The node, transport and jobs lines.
fn print_worker(m: &Value) {
    let node = &m["node"];
    let w = &m["worker"];
    let t = &m["transport"];
    println!(
        "node       {} (worker {}), citadel {}, up {}",
        text(&node["name"]),
        text(&node["worker_id"]),
        text(&node["agent_version"]),
        format::duration(count(&node["uptime_s"]) * 1000)
    );
    println!(
        "transport  {} (switches {}), consuming: {}",
        text(&t["active"]),
        count(&t["switches"]),
        if w["consuming"].as_bool() == Some(true) {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "jobs       in flight {} of {}, processed {} (succeeded {}, failed {}, cancelled {}), retried {}, dead-lettered {}",
        count(&w["in_flight"]),
        count(&w["concurrency"]),
        count(&w["processed"]),
        count(&w["succeeded"]),
        count(&w["failed"]),
        count(&w["cancelled"]),
        count(&w["retried"]),
        count(&w["dead_lettered"])
    );
    if let Some(failure) = w["journal_failure"].as_str() {
        println!("journal    FAILED, taking no work: {failure}");
    }
}

fn print_system(sys: &Value) {
    println!(
        "system     {} {}, {} CPUs, load {}, memory {} available of {}",
        text(&sys["os"]["pretty_name"]),
        text(&sys["os"]["arch"]),
        count(&sys["cpu_count"]),
        text(&sys["load"]),
        gib(&sys["memory_available_bytes"]),
        gib(&sys["memory_total_bytes"])
    );
}

/// One line a GPU, or why there is none.
fn print_gpus(gpu: &Value, sys: &Value) {
    match gpu.as_array() {
        Some(gpus) if !gpus.is_empty() => {
            for g in gpus {
                println!(
                    "gpu {}      {}, {} ({} used), {}% busy, {}°C, driver {}",
                    count(&g["index"]),
                    text(&g["name"]),
                    gib(&g["memory_total_bytes"]),
                    gib(&g["memory_used_bytes"]),
                    text(&g["utilization_percent"]),
                    text(&g["temperature_c"]),
                    text(&sys["gpu_driver"])
                );
            }
        }
        _ => println!("gpu        none ({})", text(&sys["gpu_error"])),
    }
}

/// One line a service, or why they are unknown.
fn print_services(services: &Value) {
    for svc in services.as_array().into_iter().flatten() {
        match svc.get("error") {
            Some(e) => println!("services   unknown: {}", text(e)),
            None => println!(
                "service    {} ({}): {}{}, {}",
                text(&svc["name"]),
                text(&svc["image"]),
                text(&svc["state"]),
                svc["health"]
                    .as_str()
                    .map_or(String::new(), |h| format!(" ({h})")),
                if svc["ready"].as_bool() == Some(true) {
                    format!("ready at {}", text(&svc["url"]))
                } else {
                    format!("not ready: {}", text(&svc["detail"]))
                }
            ),
        }
    }
}
