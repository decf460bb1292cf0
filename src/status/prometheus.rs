//! `/metrics`: the runner's counters and histograms, the transport route, the dead-letter
//! queues' fill and the GPUs in the Prometheus text exposition format (version 0.0.4): `# HELP`
//! and `# TYPE` once per family, label values escaped, histograms as cumulative `_bucket{le=…}`
//! lines plus `_sum` and `_count`. Rendering is a pure function of a snapshot (the dead-letter
//! fill is the transports' own); this module never measures anything itself.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use citadel_transports::dead_letters::DeadLetterFill;

use crate::platform::Platform;
use crate::runner::metrics::HistogramSnapshot;
use crate::runner::Counters;

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Builds the exposition one metric family at a time.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// A label value with `\`, `"` and line feeds escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn labels(pairs: &[(&str, &str)]) -> String {
    if pairs.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: f64) {
        let _ = writeln!(self.out, "{name}{} {}", labels(pairs), number(value));
    }

    /// A family with one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per label set.
    pub fn labelled(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: &[(Vec<(&str, &str)>, f64)],
    ) {
        self.family(name, kind, help);
        for (pairs, v) in samples {
            self.sample(name, pairs, *v);
        }
    }

    /// A histogram family with one series per label set.
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Vec<(&str, &str)>, HistogramSnapshot)],
    ) {
        self.family(name, "histogram", help);
        for (pairs, h) in series {
            for (bound, count) in &h.buckets {
                let le = number(*bound);
                let mut with_le = pairs.clone();
                with_le.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &with_le, *count as f64);
            }
            self.sample(&format!("{name}_sum"), pairs, h.sum_seconds);
            self.sample(&format!("{name}_count"), pairs, h.count as f64);
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

/// Everything `/metrics` shows.
#[derive(Debug)]
pub struct Snapshot<'a> {
    pub counters: &'a Counters,
    pub route: citadel_transports::Route,
    pub platform: &'a Platform,
    pub node_name: &'a str,
    pub uptime_s: f64,
    /// The streams routing derived, when it did.
    pub routing: Option<super::RoutingView>,
    /// The jobs claimed per stream, when the source reads streams of its own.
    pub claims: Option<citadel_transports::routing::RouteStats>,
}

/// Renders the exposition.
pub fn render(s: &Snapshot<'_>) -> String {
    let c = s.counters;
    let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let mut e = Exposition::default();
    e.labelled(
        "citadel_info",
        "gauge",
        "The agent's version and node name (always 1).",
        &[(
            vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("node", s.node_name),
            ],
            1.0,
        )],
    );
    if let Some(r) = &s.routing {
        let prio: Vec<String> = r.streams.iter().map(|(_, p)| p.to_string()).collect();
        let samples: Vec<(Vec<(&str, &str)>, f64)> = r
            .streams
            .iter()
            .zip(&prio)
            .map(|((stream, _), p)| {
                (
                    vec![("stream", stream.as_str()), ("priority", p.as_str())],
                    1.0,
                )
            })
            .collect();
        e.labelled(
            "citadel_routing_stream",
            "gauge",
            "The job streams this node consumes now, derived from its capabilities (always 1).",
            &samples,
        );
    }
    if let Some(stats) = &s.claims {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = stats
            .claims
            .iter()
            .map(|(stream, n)| (vec![("stream", stream.as_str())], *n as f64))
            .collect();
        e.labelled(
            "citadel_routing_claims_total",
            "counter",
            "Jobs claimed per stream (NATS: per subject) since the worker started.",
            &samples,
        );
    }
    e.single(
        "citadel_uptime_seconds",
        "gauge",
        "Seconds since the worker started.",
        s.uptime_s,
    );
    let outcomes = c.jobs.outcomes();
    let samples: Vec<(Vec<(&str, &str)>, f64)> = outcomes
        .iter()
        .map(|((t, o), n)| (vec![("type", t.as_str()), ("outcome", *o)], *n as f64))
        .collect();
    e.labelled(
        "citadel_jobs_total",
        "counter",
        "Job attempts by type and how they ended (succeeded, failed, cancelled, timed_out, interrupted, skipped).",
        &samples,
    );
    let durations = c.jobs.durations();
    let series: Vec<(Vec<(&str, &str)>, HistogramSnapshot)> = durations
        .iter()
        .map(|(t, h)| (vec![("type", t.as_str())], h.clone()))
        .collect();
    e.histograms(
        "citadel_job_duration_seconds",
        "How long handlers ran, by job type.",
        &series,
    );
    e.histograms(
        "citadel_job_queue_wait_seconds",
        "From the producer's enqueuedAt to the start of a job's first attempt.",
        &[(vec![], c.jobs.queue_wait.snapshot())],
    );
    e.histograms(
        "citadel_journal_append_seconds",
        "Durable journal appends before a settlement (includes the group-commit flush).",
        &[(vec![], c.jobs.journal_append.snapshot())],
    );
    e.single(
        "citadel_jobs_in_flight",
        "gauge",
        "Deliveries being worked on now.",
        get(&c.in_flight),
    );
    for (name, help, v) in [
        (
            "citadel_jobs_received_total",
            "Deliveries received from the transport.",
            &c.received,
        ),
        (
            "citadel_jobs_retried_total",
            "Failed attempts scheduled for a retry.",
            &c.retried,
        ),
        (
            "citadel_dead_letters_total",
            "Deliveries sent to the dead-letter queue.",
            &c.dead_lettered,
        ),
        (
            "citadel_jobs_deduplicated_total",
            "Redeliveries of succeeded jobs acked without running.",
            &c.deduplicated,
        ),
        (
            "citadel_jobs_released_total",
            "Claimed deliveries handed back unstarted.",
            &c.released,
        ),
        (
            "citadel_lease_renewals_total",
            "Lease extensions of running jobs.",
            &c.jobs.lease_renewals,
        ),
        (
            "citadel_leases_lost_total",
            "Deliveries fenced: their lease was lost, or no renewal was confirmed for the lease less a margin (the handler was stopped).",
            &c.jobs.leases_lost,
        ),
        (
            "citadel_redeliveries_total",
            "Deliveries that were not a job's first attempt.",
            &c.jobs.redeliveries,
        ),
    ] {
        e.single(name, "counter", help, get(v));
    }
    e.single(
        "citadel_worker_consuming",
        "gauge",
        "1 while the worker takes jobs from its transport.",
        if c.consuming.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        },
    );
    e.labelled(
        "citadel_transport_active",
        "gauge",
        "The transport delivering new jobs (1 for the active one).",
        &[(vec![("transport", s.route.active.as_str())], 1.0)],
    );
    e.single(
        "citadel_transport_switches_total",
        "counter",
        "How often the active transport changed.",
        s.route.switches as f64,
    );
    dead_letter_fill(&mut e, &citadel_transports::dead_letters::snapshot());
    e.single(
        "citadel_gpus",
        "gauge",
        "NVIDIA GPUs detected (0 without a driver).",
        s.platform.gpu.gpus.len() as f64,
    );
    let gpus = &s.platform.gpu.gpus;
    let index: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
    let gpu_family = |e: &mut Exposition,
                      name: &str,
                      help: &str,
                      f: &dyn Fn(&crate::platform::Gpu) -> Option<f64>| {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = gpus
            .iter()
            .zip(&index)
            .filter_map(|(g, i)| {
                Some((vec![("gpu", i.as_str()), ("name", g.name.as_str())], f(g)?))
            })
            .collect();
        if !samples.is_empty() {
            e.labelled(name, "gauge", help, &samples);
        }
    };
    gpu_family(
        &mut e,
        "citadel_gpu_utilization_percent",
        "GPU busy time over the last sample period.",
        &|g| g.utilization_percent.map(f64::from),
    );
    gpu_family(
        &mut e,
        "citadel_gpu_memory_used_bytes",
        "GPU memory in use.",
        &|g| g.memory_used_bytes.map(|b| b as f64),
    );
    gpu_family(
        &mut e,
        "citadel_gpu_memory_total_bytes",
        "GPU memory in all.",
        &|g| g.memory_total_bytes.map(|b| b as f64),
    );
    gpu_family(
        &mut e,
        "citadel_gpu_temperature_celsius",
        "GPU die temperature.",
        &|g| g.temperature_c.map(f64::from),
    );
    e.finish()
}

/// Each dead-letter queue's size, cap and the drops at its cap (as the transports last saw
/// them after a dead-letter move).
fn dead_letter_fill(e: &mut Exposition, fill: &[DeadLetterFill]) {
    if fill.is_empty() {
        return;
    }
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&DeadLetterFill) -> u64,
    );
    let families: [Family; 3] = [
        (
            "citadel_dead_letter_queue_size",
            "gauge",
            "Dead letters a dead-letter queue holds (as of the last move into it).",
            |d| d.size,
        ),
        (
            "citadel_dead_letter_queue_cap",
            "gauge",
            "The most dead letters a dead-letter queue keeps.",
            |d| d.cap,
        ),
        (
            "citadel_dead_letters_dropped_total",
            "counter",
            "Old dead letters dropped by a dead-letter queue's cap (count or age).",
            |d| d.dropped,
        ),
    ];
    for (name, kind, help, value) in families {
        let samples: Vec<(Vec<(&str, &str)>, f64)> = fill
            .iter()
            .map(|d| (vec![("queue", d.queue.as_str())], value(d) as f64))
            .collect();
        e.labelled(name, kind, help, &samples);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_fill_is_exposed_per_queue() {
        let q = "redis:dlq:v1:prom-test";
        citadel_transports::dead_letters::record(q, 3, 3, 2);
        let fill = citadel_transports::dead_letters::fill(q).unwrap();
        let mut e = Exposition::default();
        dead_letter_fill(&mut e, &[fill]);
        let text = e.finish();
        for line in [
            "citadel_dead_letter_queue_size{queue=\"redis:dlq:v1:prom-test\"} 3",
            "citadel_dead_letter_queue_cap{queue=\"redis:dlq:v1:prom-test\"} 3",
            "citadel_dead_letters_dropped_total{queue=\"redis:dlq:v1:prom-test\"} 2",
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
    }

    #[test]
    fn label_values_are_escaped_and_infinity_is_spelled() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(number(f64::INFINITY), "+Inf");
        let mut e = Exposition::default();
        e.labelled("x_total", "counter", "help", &[(vec![("t", "q\"")], 2.0)]);
        assert_eq!(
            e.finish(),
            "# HELP x_total help\n# TYPE x_total counter\nx_total{t=\"q\\\"\"} 2\n"
        );
    }
}
