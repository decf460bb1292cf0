//! `citadel bench platform`: what platform detection and the metrics exposition cost — GPU
//! detection alone (NVML, or its absence), the whole detection the status message uses, and
//! rendering `/metrics` for a busy registry (64 job types × 5 outcomes, with durations).
//! It measures and prints; it asserts nothing.

use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use super::percentile;
use crate::runner::Counters;

#[derive(Debug, Args)]
pub struct PlatformBench {
    /// Measurements per figure.
    #[arg(long, default_value_t = 200)]
    runs: usize,
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Figure {
    what: &'static str,
    p50_us: f64,
    p99_us: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    gpus: usize,
    gpu_error: Option<String>,
    metrics_bytes: usize,
    figures: Vec<Figure>,
}

/// Runs `f` `runs` times and returns the sorted durations in microseconds.
async fn sample<F, Fut>(runs: usize, mut f: F) -> Vec<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut us = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let t = Instant::now();
        f().await;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    us.sort_by(f64::total_cmp);
    us
}

fn figure(what: &'static str, us: &[f64]) -> Figure {
    Figure {
        what,
        p50_us: percentile(us, 0.5),
        p99_us: percentile(us, 0.99),
    }
}

pub async fn run(args: PlatformBench) -> anyhow::Result<()> {
    let dir = std::env::temp_dir();
    let first = Instant::now();
    let report = crate::platform::gpu::detect();
    let first_gpu = first.elapsed();
    let gpu = sample(args.runs, || async {
        std::hint::black_box(crate::platform::gpu::detect());
    })
    .await;
    let whole = sample(args.runs, || async {
        std::hint::black_box(crate::platform::detect(&dir).await);
    })
    .await;

    let counters = Counters::default();
    for t in 0..64 {
        let ty = format!("type_{t}");
        for outcome in [
            "succeeded",
            "failed",
            "cancelled",
            "timed_out",
            "interrupted",
        ] {
            counters.jobs.outcome(&ty, outcome);
        }
        counters.jobs.duration(&ty, Duration::from_millis(t));
    }
    let platform = crate::platform::detect(&dir).await;
    let snapshot = crate::status::prometheus::Snapshot {
        counters: &counters,
        route: citadel_transports::Route::fixed("redis"),
        platform: &platform,
        node_name: "bench",
        uptime_s: 1.0,
        routing: None,
        claims: None,
    };
    let metrics_bytes = crate::status::prometheus::render(&snapshot).len();
    let render = sample(args.runs, || async {
        std::hint::black_box(crate::status::prometheus::render(&snapshot));
    })
    .await;

    let mut figures = vec![
        Figure {
            what: "first GPU detection (loads NVML)",
            p50_us: first_gpu.as_secs_f64() * 1e6,
            p99_us: first_gpu.as_secs_f64() * 1e6,
        },
        figure("GPU detection", &gpu),
        figure("whole platform detection", &whole),
        figure("/metrics rendering, 64 types", &render),
    ];
    figures.iter_mut().for_each(|f| {
        f.p50_us = (f.p50_us * 10.0).round() / 10.0;
        f.p99_us = (f.p99_us * 10.0).round() / 10.0;
    });
    let out = Report {
        gpus: report.gpus.len(),
        gpu_error: report.error,
        metrics_bytes,
        figures,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "GPUs: {} ({})",
        out.gpus,
        out.gpu_error.as_deref().unwrap_or("NVML answered")
    );
    let rows: Vec<Vec<String>> = out
        .figures
        .iter()
        .map(|f| {
            vec![
                f.what.to_string(),
                format!("{:.1}", f.p50_us),
                format!("{:.1}", f.p99_us),
            ]
        })
        .collect();
    crate::format::table(&["measurement", "p50 µs", "p99 µs"], &rows);
    println!("/metrics for 64 job types: {} bytes", out.metrics_bytes);
    Ok(())
}
