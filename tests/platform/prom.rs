//! A strict parser of the Prometheus text exposition format (0.0.4), for checking `/metrics`:
//! every line is a `# HELP`, a `# TYPE` or a sample; names and label names are valid; label
//! values use only the three escapes; values are floats (`+Inf`, `-Inf`, `NaN` included); a
//! family's `TYPE` comes once, before its samples, and its samples are not interleaved with
//! another family's; histogram buckets are cumulative, end with `le="+Inf"`, and that bucket
//! equals `_count`.

use std::collections::{BTreeMap, HashMap, HashSet};

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub types: HashMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the sample `name` whose labels include `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !n.starts_with("__")
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse::<f64>().map_err(|_| format!("bad value `{v}`")),
    }
}

/// Parses `{a="x",b="y"}` at the start of `s`; returns the labels and the rest.
fn parse_labels(s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = &s[1..];
    loop {
        if let Some(r) = rest.strip_prefix('}') {
            return Ok((labels, r));
        }
        let eq = rest.find('=').ok_or("label without =")?;
        let name = &rest[..eq];
        if !valid_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        rest = rest[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (i, '"') => break i,
                (_, '\n') => return Err("line feed in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label `{name}` twice"));
        }
        rest = &rest[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
}

/// The family a sample belongs to (histogram suffixes removed when the base is a histogram).
fn family_of<'a>(name: &'a str, types: &HashMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if types
                .get(base)
                .is_some_and(|t| t == "histogram" || t == "summary")
            {
                return base;
            }
        }
    }
    name
}

pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut helps = HashSet::new();
    let mut done_families: HashSet<String> = HashSet::new();
    let mut current: Option<String> = None;
    if !text.ends_with('\n') {
        return Err("the exposition must end with a line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kw, name) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            if !valid_name(name) {
                return Err(err(format!("bad metric name `{name}`")));
            }
            match kw {
                "HELP" if !helps.insert(name.to_string()) => {
                    return Err(err("HELP twice".into()));
                }
                "TYPE" => {
                    let t = parts.next().unwrap_or("");
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(err(format!("bad type `{t}`")));
                    }
                    if e.types.insert(name.to_string(), t.to_string()).is_some() {
                        return Err(err("TYPE twice".into()));
                    }
                    if e.samples
                        .iter()
                        .any(|s| family_of(&s.name, &e.types) == name)
                    {
                        return Err(err("TYPE after samples".into()));
                    }
                }
                _ => {}
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !valid_name(name) {
            return Err(err(format!("bad metric name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        let mut fields = rest.trim_start_matches(' ').split(' ');
        let value = parse_value(fields.next().unwrap_or("")).map_err(err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing fields".into()));
        }
        let family = family_of(name, &e.types).to_string();
        if current.as_deref() != Some(&family) {
            if !done_families.insert(family.clone()) {
                return Err(err(format!("samples of `{family}` are not together")));
            }
            current = Some(family.clone());
        }
        if e.types.get(&family).is_some_and(|t| t == "counter") && value < 0.0 {
            return Err(err("negative counter".into()));
        }
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&e)?;
    Ok(e)
}

fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (family, t) in &e.types {
        if t != "histogram" {
            continue;
        }
        // Group the buckets by their labels without `le`.
        // Labels without `le` → (bound, cumulative count) of each bucket.
        type Series = BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>>;
        let mut series: Series = BTreeMap::new();
        for s in e
            .samples
            .iter()
            .filter(|s| s.name == format!("{family}_bucket"))
        {
            let le = s
                .labels
                .get("le")
                .ok_or(format!("{family}: bucket without le"))?;
            let key: Vec<_> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series
                .entry(key)
                .or_default()
                .push((parse_value(le)?, s.value));
        }
        for (key, buckets) in series {
            let mut prev = (f64::NEG_INFINITY, 0.0);
            for b in &buckets {
                if b.0 <= prev.0 || b.1 < prev.1 {
                    return Err(format!(
                        "{family}{key:?}: buckets not increasing: {buckets:?}"
                    ));
                }
                prev = *b;
            }
            if prev.0 != f64::INFINITY {
                return Err(format!("{family}{key:?}: no +Inf bucket"));
            }
            let labels: Vec<(&str, &str)> =
                key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let count = e
                .value(&format!("{family}_count"), &labels)
                .ok_or(format!("{family}: no _count"))?;
            e.value(&format!("{family}_sum"), &labels)
                .ok_or(format!("{family}: no _sum"))?;
            if count != prev.1 {
                return Err(format!(
                    "{family}{key:?}: +Inf bucket {} != count {count}",
                    prev.1
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn the_parser_is_strict() {
    let ok = "# HELP a_total x\n# TYPE a_total counter\na_total{t=\"q\\\"\"} 2\n\
              # TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3.5\nh_count 2\n";
    let e = parse(ok).unwrap();
    assert_eq!(e.value("a_total", &[("t", "q\"")]), Some(2.0));
    for bad in [
        "a 1",                                       // no final line feed
        "a{b=\"x} 1\n",                              // unterminated
        "a{b=\"\\t\"} 1\n",                          // bad escape
        "1a 1\n",                                    // bad name
        "a one\n",                                   // bad value
        "# TYPE a counter\n# TYPE a counter\na 1\n", // TYPE twice
        "a 1\nb 1\na 2\n",                           // interleaved
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n", // no +Inf
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
    }
}
