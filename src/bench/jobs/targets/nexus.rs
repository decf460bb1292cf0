//! `citadel bench nexus` and `citadel bench websocket`: jobs through the embedded control plane,
//! started in the bench process on a free loopback port with its own temporary data folder, and
//! taken by the worker with long-poll claims (nexus), plain 5 s polling as the Go agent does
//! (`nexus --plain`, docs/wire-format.md#nexus-http), or the control plane's WebSocket push. The plane's CPU is part
//! of the process's figures.

use std::sync::Arc;

use anyhow::Context as _;
use async_trait::async_trait;
use citadel_transports::{websocket, JobSource, NexusConfig, TransportConfig, WebSocketConfig};
use clap::Args;
use indicatif::ProgressBar;
use serde_json::json;

use super::super::{BenchJob, Defaults, Lane, Load, Target};
use citadel_nexus::{self as nexus, Listen};

#[derive(Debug, Args)]
pub struct NexusBench {
    /// Take jobs as the Go agent does (docs/wire-format.md#nexus-http polling every 5 s) instead of long-poll claims.
    #[arg(long)]
    plain: bool,
    #[command(flatten)]
    load: Load,
}

#[derive(Debug, Args)]
pub struct WebSocketBench {
    #[command(flatten)]
    load: Load,
}

/// How the bench worker takes jobs from the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    LongPoll,
    Plain,
    WebSocket,
}

const DEFAULTS: Defaults = Defaults {
    jobs: 2000,
    rate: 100,
};

pub async fn run_nexus(args: NexusBench) -> anyhow::Result<()> {
    let via = if args.plain {
        Via::Plain
    } else {
        Via::LongPoll
    };
    run(via, &args.load, "nexus").await
}

pub async fn run_websocket(args: WebSocketBench) -> anyhow::Result<()> {
    run(Via::WebSocket, &args.load, "ws").await
}

async fn run(via: Via, load: &Load, name: &str) -> anyhow::Result<()> {
    let tmp = super::work_dir(name);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let running = nexus::start(&tmp.join("plane"), Listen::LoopbackFrom(17_411))
        .await
        .context("starting the control plane")?;
    let target = Plane {
        url: running.url.clone(),
        token: running.token.clone(),
        http: reqwest::Client::new(),
        via,
    };
    let result = super::super::run(&target, load, DEFAULTS, &tmp.join("journals")).await;
    running.stop().await?;
    std::fs::remove_dir_all(&tmp).ok();
    result
}

#[derive(Clone)]
struct Plane {
    url: String,
    token: String,
    http: reqwest::Client,
    via: Via,
}

impl Plane {
    async fn submit(&self, job: &BenchJob) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/api/v1/jobs", self.url))
            .bearer_auth(&self.token)
            .json(&json!({"id": job.id, "type": job.kind, "payload": job.payload}))
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "submit: {}", resp.status());
        Ok(())
    }
}

#[async_trait]
impl Target for Plane {
    fn describe(&self) -> String {
        match self.via {
            Via::LongPoll => "the embedded control plane (loopback HTTP, long-poll claims)",
            Via::Plain => "the embedded control plane (loopback HTTP, plain 5 s polling)",
            Via::WebSocket => "the embedded control plane's WebSocket push (loopback)",
        }
        .into()
    }

    /// The plane has one queue; runs follow each other, and job ids carry the run number.
    async fn lane(&self, _run_no: usize) -> anyhow::Result<Box<dyn Lane>> {
        Ok(Box::new(self.clone()))
    }
}

#[async_trait]
impl Lane for Plane {
    async fn source(&self) -> anyhow::Result<Arc<dyn JobSource>> {
        let cfg = if self.via == Via::WebSocket {
            let mut cfg = WebSocketConfig::new(websocket::ws_url(&self.url)?, "bench-worker");
            cfg.token = Some(self.token.clone());
            TransportConfig::WebSocket(cfg)
        } else {
            let mut cfg = NexusConfig::new(self.url.clone(), "bench-worker");
            cfg.token = Some(self.token.clone());
            cfg.force_plain = self.via == Via::Plain;
            TransportConfig::Nexus(cfg)
        };
        Ok(cfg.connect().await?)
    }

    /// Submits with 16 requests in flight.
    async fn fill(&self, jobs: &[BenchJob], progress: &ProgressBar) -> anyhow::Result<()> {
        let jobs = Arc::new(jobs.to_vec());
        let mut tasks = tokio::task::JoinSet::new();
        for w in 0..16 {
            let (plane, jobs, progress) = (self.clone(), jobs.clone(), progress.clone());
            tasks.spawn(async move {
                for job in jobs.iter().skip(w).step_by(16) {
                    plane.submit(job).await?;
                    progress.inc(1);
                }
                anyhow::Ok(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
        Ok(())
    }

    async fn enqueue(&self, job: &BenchJob) -> anyhow::Result<()> {
        self.submit(job).await
    }
}
