//! Writing the manifest (`citadel.yaml`): the first one (`citadel init`), and changes applied
//! from the platform (`APPLY_DEVICE_CONFIG`), with the list of what changed. Edits work on the
//! manifest as plain data, so sections this module does not know (other transports, engines)
//! are kept as they are; every write goes through [`crate::config::write_manifest`] (validated,
//! atomic, mode 0600). It must never put a secret into the manifest.

use std::path::Path;

use anyhow::Context as _;
use serde::Serialize;
use serde_json::{json, Map, Value};

/// The control plane a node was enrolled with.
#[derive(Debug, Clone)]
pub struct Enrolment {
    pub url: String,
    pub token_file: std::path::PathBuf,
}

/// The first manifest of a node, with comments that teach its sections.
pub fn initial(name: &str, tags: &[String], plane: Option<&Enrolment>) -> String {
    let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let tags: Vec<String> = tags.iter().map(|t| q(t)).collect();
    let mut out = format!(
        "# citadel.yaml: this node's manifest (docs/configuration.md). `citadel up` converges the\n\
         # machine to it; `citadel config show` prints the effective settings and their sources.\n\
         node:\n  name: {}\n  tags: [{}]\n\n\
         # Inference engines run as Docker Compose services (vllm, ollama, llamacpp, lmstudio), e.g.\n\
         #   - name: vllm\n\
         #     model: Qwen/Qwen2.5-0.5B-Instruct\n\
         #     port: 8201          # host port (the engines' default ports)\n\
         #     image: vllm/vllm-openai:v0.6.4   # replaces the default image\n\
         #     gpu: true           # default: when an NVIDIA driver is present\n\
         services: []\n\n",
        q(name),
        tags.join(", ")
    );
    match plane {
        Some(p) => out.push_str(&format!(
            "transports:\n  nexus:\n    url: {}\n    token_file: {}\n\n",
            q(&p.url),
            q(&p.token_file.display().to_string())
        )),
        None => out.push_str(
            "# transports:            # none: `citadel work` serves an embedded control plane\n\
             #   redis:\n#     url: redis://127.0.0.1:6379\n\n",
        ),
    }
    out.push_str(
        "permissions:\n  shell:\n    enabled: false      # shell_command jobs are remote code execution\n\
         \x20 console:\n    enabled: false      # the terminal service (a remote shell)\n\n\
         # mesh:                   # on once the node is enrolled with a control plane\n\
         #   enabled: false\n\n\
         worker:\n  concurrency: 1\n  drain_timeout: 30s\n  journal:\n    retention: 7d\n",
    );
    out
}

/// The manifest at `path` as plain data (`{}` when the file does not exist).
pub fn load_value(path: &Path) -> anyhow::Result<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    crate::config::FileConfig::parse(&text)
        .with_context(|| format!("in the manifest {}", path.display()))?;
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    let v: Value = yaml_serde::from_str(&text)
        .with_context(|| format!("reading {} as data", path.display()))?;
    Ok(if v.is_null() { json!({}) } else { v })
}

/// Writes plain data as the manifest (validated, atomic, 0600).
pub fn store_value(path: &Path, value: &Value) -> anyhow::Result<()> {
    let text = yaml_serde::to_string(value).context("encoding the manifest")?;
    crate::config::write_manifest(path, &text)
}

/// Sets `section.key` (creating the section); `None` removes the key.
pub fn set(root: &mut Value, section: &str, key: &str, value: Option<Value>) {
    if !root.is_object() {
        *root = json!({});
    }
    let obj = root.as_object_mut().expect("an object");
    let sec = obj
        .entry(section.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if !sec.is_object() {
        *sec = Value::Object(Map::new());
    }
    let sec = sec.as_object_mut().expect("an object");
    match value {
        Some(v) => {
            sec.insert(key.to_string(), v);
        }
        None => {
            sec.remove(key);
        }
    }
}

/// One changed value of the manifest, by dotted path (`node.name`, `services[1].port`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Change {
    pub path: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// What differs between two manifests, leaf by leaf, in path order.
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let (mut a, mut b) = (Map::new(), Map::new());
    flatten("", before, &mut a);
    flatten("", after, &mut b);
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| Change {
            path: k.clone(),
            before: a.get(k).cloned(),
            after: b.get(k).cloned(),
        })
        .collect()
}

fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, v, out);
            }
        }
        Value::Array(items) if items.iter().any(|i| i.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_initial_manifest_parses_and_quotes_odd_names() {
        let text = initial("gpu: \"1\"", &["a100".into(), "lab".into()], None);
        let c = crate::config::FileConfig::parse(&text).unwrap();
        assert_eq!(c.node.name.as_deref(), Some("gpu: \"1\""));
        assert_eq!(c.node.tags.unwrap(), vec!["a100", "lab"]);
        let p = Enrolment {
            url: "http://127.0.0.1:7411".into(),
            token_file: "/x/node-token".into(),
        };
        let c = crate::config::FileConfig::parse(&initial("n", &[], Some(&p))).unwrap();
        assert_eq!(c.transports.nexus.unwrap().url.unwrap(), p.url);
    }

    #[test]
    fn diff_names_each_changed_leaf() {
        let a = json!({"node": {"name": "a", "tags": ["x"]}, "services": [{"name": "vllm"}]});
        let b = json!({"node": {"name": "b", "tags": ["x"]}, "services": [{"name": "vllm", "port": 9}, {"name": "ollama"}]});
        let d = diff(&a, &b);
        let paths: Vec<&str> = d.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(paths, ["node.name", "services[0].port", "services[1].name"]);
        assert_eq!(d[0].before, Some(json!("a")));
        assert!(diff(&a, &a).is_empty());
    }
}
