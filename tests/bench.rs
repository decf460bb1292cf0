//! `citadel bench` as a user runs it: the real binary against a real Redis (a throwaway local
//! redis-server it starts) and the embedded control plane, small runs, checking that the JSON
//! report holds every figure the README promises and that they are consistent. Timings are read,
//! never asserted.

use std::process::Command;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env_remove("CITADEL_DATA_DIR")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "citadel bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the report is JSON")
}

fn num(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("`{key}` missing in {v}"))
}

/// Percentiles are ordered and positive.
fn check_percentiles(p: &Value) {
    let keys = ["p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms"];
    let vals: Vec<f64> = keys.iter().map(|k| num(p, k)).collect();
    assert!(vals[0] >= 0.0, "{p}");
    assert!(vals.windows(2).all(|w| w[0] <= w[1]), "unordered: {p}");
}

#[test]
fn redis_bench_reports_throughput_repeats_journal_share_and_latency() {
    let r = bench(&[
        "redis",
        "--concurrency",
        "1,8",
        "--jobs",
        "400",
        "--repeat",
        "2",
        "--rate",
        "100",
        "--latency-for",
        "1s",
    ]);
    let rows = r["throughput"].as_array().unwrap();
    // c=1 and c=8 durable, then c=8 buffered.
    let shape: Vec<(u64, &str)> = rows
        .iter()
        .map(|t| {
            (
                t["concurrency"].as_u64().unwrap(),
                t["journal"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(shape, [(1, "durable"), (8, "durable"), (8, "buffered")]);
    for t in rows {
        let runs = t["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "two repeats: {t}");
        assert!(num(t, "jobs_per_sec_min") <= num(t, "jobs_per_sec"));
        assert!(num(t, "jobs_per_sec") <= num(t, "jobs_per_sec_max"));
        // CPU time is read in 10 ms ticks: a short run may read 0, never less.
        assert!(num(t, "jobs_per_sec") > 0.0 && num(t, "cpu_us_per_job") >= 0.0);
        assert!(num(t, "peak_rss_mb") > 1.0, "{t}");
        for run in runs {
            assert!(num(run, "first_done_s") <= num(run, "seconds"), "{run}");
        }
    }
    assert_eq!(
        rows[0]["jobs"], 100,
        "a quarter of the jobs at concurrency 1"
    );
    assert!(r["journal_share"].as_f64().is_some());
    let l = &r["latency"];
    assert_eq!(l["jobs"], 100);
    check_percentiles(&l["start"]);
    check_percentiles(&l["done"]);
    assert!(
        num(&l["done"], "p50_ms") >= num(&l["start"], "p50_ms"),
        "a job is done after it started: {l}"
    );
}

#[test]
fn nexus_bench_runs_sleep_jobs_latency_only() {
    let r = bench(&[
        "nexus",
        "--latency-only",
        "--job",
        "sleep:5ms",
        "--rate",
        "50",
        "--latency-for",
        "1s",
    ]);
    assert!(r["throughput"].as_array().unwrap().is_empty());
    assert_eq!(r["job"], "sleep 5ms");
    let l = &r["latency"];
    assert_eq!(l["jobs"], 50);
    assert!(
        num(&l["done"], "p50_ms") - num(&l["start"], "p50_ms") >= 4.0,
        "each job sleeps 5 ms between its start and its end: {l}"
    );
}

#[test]
fn bad_arguments_get_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_citadel"))
        .args(["bench", "redis", "--job", "shell"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use `noop` or `sleep:DURATION`"), "{err}");
}
