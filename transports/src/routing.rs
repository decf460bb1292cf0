//! Capability routing (docs/transports.md#routing): which job streams a node consumes, derived
//! from what it can do, and how each is named on each broker. [`routes`] is the one pure
//! decision: capabilities and settings in, the prioritised stream set out (this node's own
//! stream, then its organization's, then one per routing tag, then the base stream). Producers
//! name their targets with the same functions ([`Target`]), so a job sent to a tag reaches
//! exactly the nodes that have it. A running worker hands the set to its fetcher through a
//! [`RouteFeed`] (a `watch`), so the set can change without a restart.
//!
//! This module only names and decides: it must never talk to a broker or detect anything.

use std::fmt;

use tokio::sync::watch;

/// The longest tag accepted.
pub const MAX_TAG_LEN: usize = 128;

/// The categories of detected tags a node routes on unless configured otherwise (`os:` and
/// `arch:` are not among them: every node has those, so a stream per value routes nothing).
pub const DEFAULT_CATEGORIES: &[&str] = &["gpu", "vram", "engine", "model"];

/// How urgently a stream is read: higher first. A busy lower stream never starves a higher one.
pub mod priority {
    /// Jobs sent to this one node.
    pub const NODE: u8 = 3;
    /// Jobs sent to this node's organization.
    pub const ORG: u8 = 2;
    /// Jobs sent to a capability tag.
    pub const TAG: u8 = 1;
    /// The general stream(s).
    pub const BASE: u8 = 0;
}

/// Whether `tag` may name a stream: `^[a-z0-9][a-z0-9:._-]*$`, at most [`MAX_TAG_LEN`] chars.
pub fn valid_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    first_ok
        && tag.len() <= MAX_TAG_LEN
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ":._-".contains(c))
}

/// The category of a tag: the part before its first `:` (none for a plain tag like `lab`).
pub fn category(tag: &str) -> Option<&str> {
    tag.split_once(':').map(|(c, _)| c)
}

/// Which general stream(s) a node reads (`routing.base`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Base {
    /// `gpu-general` (the default).
    #[default]
    Gpu,
    /// `cpu-general`.
    Cpu,
    /// `gpu-general` with a GPU, `cpu-general` without.
    Auto,
    /// Both.
    Both,
}

impl std::str::FromStr for Base {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gpu" => Ok(Self::Gpu),
            "cpu" => Ok(Self::Cpu),
            "auto" => Ok(Self::Auto),
            "both" => Ok(Self::Both),
            _ => Err(format!("{s:?}: expected gpu, cpu, auto or both")),
        }
    }
}

/// Where a job is sent, independent of the broker.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Target {
    /// A general stream: `gpu-general` or `cpu-general`.
    General(&'static str),
    /// Every node with this tag.
    Tag(String),
    /// Every node of this organization.
    Org(String),
    /// One node, by name, within its organization when it has one.
    Node { org: Option<String>, node: String },
}

impl Target {
    /// The part after the version prefix, shared by every broker: `gpu-general`,
    /// `tag:gpu:h100`, `shell:org_acme`, `shell:org_acme:node:n1`, `node:n1`.
    fn suffix(&self) -> String {
        match self {
            Self::General(g) => (*g).to_owned(),
            Self::Tag(t) => format!("tag:{t}"),
            Self::Org(o) => format!("shell:org_{o}"),
            Self::Node { org: Some(o), node } => format!("shell:org_{o}:node:{node}"),
            Self::Node { org: None, node } => format!("node:{node}"),
        }
    }

    /// The Redis stream: `jobs:v1:{suffix}`.
    pub fn redis_stream(&self) -> String {
        format!("jobs:v1:{}", self.suffix())
    }

    /// The NATS subject: `jobs.v1.{suffix}` with every `.` inside a name turned into `_` (a `.`
    /// separates subject tokens) and `:` into `.` (`jobs.v1.tag.gpu.h100`).
    pub fn nats_subject(&self) -> String {
        nats_subject_of(&self.redis_stream())
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.suffix())
    }
}

/// The NATS subject of a Redis stream name of this scheme (`jobs:v1:tag:gpu:h100` →
/// `jobs.v1.tag.gpu.h100`, see [`Target::nats_subject`]); any other name is kept as it is. A
/// [`RouteFeed`] carries Redis names; the NATS fetcher reads their subjects.
pub fn nats_subject_of(stream: &str) -> String {
    match stream.strip_prefix("jobs:v1:") {
        Some(suffix) => format!("jobs.v1.{}", suffix.replace('.', "_").replace(':', ".")),
        None => stream.to_owned(),
    }
}

/// One stream a node consumes, and how urgently.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Route {
    pub target: Target,
    pub priority: u8,
}

impl Route {
    pub fn stream(&self) -> String {
        self.target.redis_stream()
    }
}

/// What the node can do now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub has_gpu: bool,
    /// Detected tags (`gpu:…`, `vram:…`, `engine:…`, `model:…`, `os:…`, …).
    pub tags: Vec<String>,
}

/// The routing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutingConfig {
    pub base: Base,
    /// The categories of detected tags that get a stream.
    pub categories: Vec<String>,
    /// Tags from the manifest (`node.tags`): always routed.
    pub manual_tags: Vec<String>,
    pub org: Option<String>,
    pub node: String,
}

impl RoutingConfig {
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            base: Base::Gpu,
            categories: DEFAULT_CATEGORIES.iter().map(|c| (*c).to_owned()).collect(),
            manual_tags: Vec::new(),
            org: None,
            node: node.into(),
        }
    }
}

/// The tags a node routes on: the detected ones of a routed category (never `cpu`) and the
/// manual ones, valid, sorted, without duplicates.
pub fn routing_tags(caps: &Capabilities, cfg: &RoutingConfig) -> Vec<String> {
    let detected = caps.tags.iter().filter(|t| {
        category(t).is_some_and(|c| c != "cpu" && cfg.categories.iter().any(|k| k == c))
    });
    let mut tags: Vec<String> = detected
        .chain(&cfg.manual_tags)
        .filter(|t| valid_tag(t))
        .cloned()
        .collect();
    tags.sort();
    tags.dedup();
    tags
}

/// The streams a node with `caps` consumes under `cfg`, highest priority first (then by name),
/// without duplicates.
pub fn routes(caps: &Capabilities, cfg: &RoutingConfig) -> Vec<Route> {
    let route = |target, priority| Route { target, priority };
    let mut out = vec![route(
        Target::Node {
            org: cfg.org.clone(),
            node: cfg.node.clone(),
        },
        priority::NODE,
    )];
    if let Some(org) = &cfg.org {
        out.push(route(Target::Org(org.clone()), priority::ORG));
    }
    for t in routing_tags(caps, cfg) {
        out.push(route(Target::Tag(t), priority::TAG));
    }
    let (gpu, cpu) = match cfg.base {
        Base::Gpu => (true, false),
        Base::Cpu => (false, true),
        Base::Auto => (caps.has_gpu, !caps.has_gpu),
        Base::Both => (true, true),
    };
    if gpu {
        out.push(route(Target::General("gpu-general"), priority::BASE));
    }
    if cpu {
        out.push(route(Target::General("cpu-general"), priority::BASE));
    }
    sort(&mut out);
    out
}

/// Highest priority first, then by name; duplicates removed.
pub fn sort(routes: &mut Vec<Route>) {
    routes.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.target.cmp(&b.target)));
    routes.dedup_by(|a, b| a.target == b.target);
}

/// A fixed stream list as routes of equal priority (explicit `--stream` settings).
pub fn fixed(streams: &[String]) -> Vec<(String, u8)> {
    streams
        .iter()
        .map(|s| (s.clone(), priority::BASE))
        .collect()
}

/// The tags of the tag streams of a stream set (what a node offers a control plane).
pub fn tags_of(set: &[(String, u8)]) -> Vec<String> {
    set.iter()
        .filter_map(|(s, _)| s.strip_prefix("jobs:v1:tag:").map(str::to_owned))
        .collect()
}

/// What a source that reads a stream set reports for `/metrics`: the jobs claimed per stream
/// (or subject) since it started, also from streams no longer read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteStats {
    pub claims: std::collections::BTreeMap<String, u64>,
}

/// The live stream set a fetcher follows: `(stream or subject, priority)`, highest priority
/// first. Equal when both ends share one channel.
#[derive(Debug, Clone)]
pub struct RouteFeed(watch::Receiver<Vec<(String, u8)>>);

impl PartialEq for RouteFeed {
    fn eq(&self, other: &Self) -> bool {
        self.0.same_channel(&other.0)
    }
}

impl Eq for RouteFeed {}

impl RouteFeed {
    pub fn new(rx: watch::Receiver<Vec<(String, u8)>>) -> Self {
        Self(rx)
    }

    /// The set now, marking it seen.
    pub fn current(&mut self) -> Vec<(String, u8)> {
        self.0.borrow_and_update().clone()
    }

    /// The set now, without marking it seen (mark it with [`RouteFeed::current`] once it is
    /// applied).
    pub fn peek(&self) -> Vec<(String, u8)> {
        self.0.borrow().clone()
    }

    /// Whether the set changed since it was last read (a closed sender changes nothing).
    pub fn changed(&self) -> bool {
        self.0.has_changed().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn caps(gpu: bool, tags: &[&str]) -> Capabilities {
        Capabilities {
            has_gpu: gpu,
            tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        }
    }

    fn streams(r: &[Route]) -> Vec<(String, u8)> {
        r.iter().map(|r| (r.stream(), r.priority)).collect()
    }

    #[test]
    fn a_gpu_node_routes_on_its_gpu_engines_and_models_not_its_os() {
        let mut cfg = RoutingConfig::new("n1");
        cfg.org = Some("acme".into());
        cfg.manual_tags = vec!["lab".into(), "Bad Tag".into()];
        let c = caps(
            true,
            &[
                "arch:x86_64",
                "engine:vllm",
                "gpu:nvidia-h100",
                "model:llama-3.1-8b",
                "os:linux",
                "vram:80gb",
                "cpu:avx512",
            ],
        );
        let got = streams(&routes(&c, &cfg));
        let want: Vec<(String, u8)> = [
            ("jobs:v1:shell:org_acme:node:n1", 3),
            ("jobs:v1:shell:org_acme", 2),
            ("jobs:v1:tag:engine:vllm", 1),
            ("jobs:v1:tag:gpu:nvidia-h100", 1),
            ("jobs:v1:tag:lab", 1),
            ("jobs:v1:tag:model:llama-3.1-8b", 1),
            ("jobs:v1:tag:vram:80gb", 1),
            ("jobs:v1:gpu-general", 0),
        ]
        .iter()
        .map(|(s, p)| ((*s).to_owned(), *p))
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn the_base_follows_the_setting() {
        let mut cfg = RoutingConfig::new("n");
        let general = |cfg: &RoutingConfig, gpu| -> Vec<String> {
            routes(&caps(gpu, &[]), cfg)
                .into_iter()
                .filter(|r| r.priority == priority::BASE)
                .map(|r| r.stream())
                .collect()
        };
        assert_eq!(general(&cfg, false), ["jobs:v1:gpu-general"]);
        cfg.base = Base::Auto;
        assert_eq!(general(&cfg, false), ["jobs:v1:cpu-general"]);
        assert_eq!(general(&cfg, true), ["jobs:v1:gpu-general"]);
        cfg.base = Base::Both;
        assert_eq!(
            general(&cfg, false),
            ["jobs:v1:cpu-general", "jobs:v1:gpu-general"]
        );
        cfg.base = Base::Cpu;
        assert_eq!(general(&cfg, true), ["jobs:v1:cpu-general"]);
        assert_eq!(
            routes(&caps(false, &[]), &cfg)[0].stream(),
            "jobs:v1:node:n"
        );
    }

    #[test]
    fn names_on_each_broker() {
        let t = Target::Tag("model:llama-3.1-8b".into());
        assert_eq!(t.redis_stream(), "jobs:v1:tag:model:llama-3.1-8b");
        assert_eq!(t.nats_subject(), "jobs.v1.tag.model.llama-3_1-8b");
        let n = Target::Node {
            org: Some("acme".into()),
            node: "n1".into(),
        };
        assert_eq!(n.redis_stream(), "jobs:v1:shell:org_acme:node:n1");
        assert_eq!(n.nats_subject(), "jobs.v1.shell.org_acme.node.n1");
        assert_eq!(
            nats_subject_of("jobs:v1:gpu-general"),
            "jobs.v1.gpu-general"
        );
        assert_eq!(nats_subject_of("custom.x"), "custom.x");
        assert!(valid_tag("gpu:h100"));
        assert!(!valid_tag(":x") && !valid_tag("GPU") && !valid_tag(""));
        assert!(!valid_tag(&"a".repeat(129)) && valid_tag(&"a".repeat(128)));
    }

    fn tag() -> impl Strategy<Value = String> {
        prop_oneof![
            "(gpu|vram|engine|model|os|arch|cpu):[a-z0-9.-]{1,8}",
            "[a-z][a-z0-9]{0,5}",
            "[A-Z :]{1,4}",
        ]
    }

    proptest! {
        /// Against a simple model: one node stream first; every route of a higher priority
        /// before every lower one; a tag stream exactly for each valid manual tag and each
        /// detected tag of a routed category but `cpu`; exactly one base without `both`.
        #[test]
        fn routes_match_the_model(
            detected in proptest::collection::vec(tag(), 0..8),
            manual in proptest::collection::vec(tag(), 0..4),
            gpu in any::<bool>(),
            base in 0u8..4,
            org in proptest::option::of("[a-z]{1,4}"),
        ) {
            let mut cfg = RoutingConfig::new("node-1");
            cfg.base = [Base::Gpu, Base::Cpu, Base::Auto, Base::Both][base as usize];
            cfg.manual_tags = manual.clone();
            cfg.org = org.clone();
            let c = Capabilities { has_gpu: gpu, tags: detected.clone() };
            let r = routes(&c, &cfg);
            prop_assert_eq!(r[0].priority, priority::NODE);
            prop_assert!(r.windows(2).all(|w| w[0].priority >= w[1].priority));
            let mut names: Vec<_> = r.iter().map(Route::stream).collect();
            names.sort();
            names.dedup();
            prop_assert_eq!(names.len(), r.len());
            let mut want: Vec<String> = detected
                .iter()
                .filter(|t| matches!(category(t), Some("gpu" | "vram" | "engine" | "model")))
                .chain(&manual)
                .filter(|t| valid_tag(t))
                .cloned()
                .collect();
            want.sort();
            want.dedup();
            let got: Vec<String> = r
                .iter()
                .filter_map(|r| match &r.target { Target::Tag(t) => Some(t.clone()), _ => None })
                .collect();
            prop_assert_eq!(got, want);
            let bases = r.iter().filter(|r| r.priority == priority::BASE).count();
            prop_assert_eq!(bases, if cfg.base == Base::Both { 2 } else { 1 });
            prop_assert_eq!(r.iter().any(|r| r.priority == priority::ORG), org.is_some());
        }
    }
}
