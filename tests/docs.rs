//! The configuration reference (`docs/configuration.md`) cannot drift from the code: every key
//! and environment variable the code reads is documented, every documented one is read, grouped
//! spellings are the code's, and each default written there is the one the code uses. The
//! keys the code reads come from the code itself: its own refusal of an unknown key lists them.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use tokengate::config::{grouped, Config, Env};

const SECRET: &str = "a-secret-of-at-least-thirty-two-bytes!!";
const PROBE: &str = "zz_not_a_setting";

/// One row of the reference table.
#[derive(Debug)]
struct Row {
    key: String,
    grouped: Option<String>,
    env: Vec<String>,
    /// The default, when the table writes one as a value.
    default: Option<String>,
}

/// The backticked words of one table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let text = std::fs::read_to_string(path).unwrap();
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            assert_eq!(cells.len(), 5, "{line}");
            let key = ticked(cells[0]);
            let default = ticked(cells[3]);
            let plain_default = cells[3].starts_with('`') && default.len() == 1;
            Row {
                key: key[0].clone(),
                grouped: ticked(cells[1]).into_iter().next(),
                env: ticked(cells[2]),
                default: plain_default.then(|| default[0].clone()),
            }
        })
        .collect()
}

/// An environment that records every variable asked for and holds the given ones.
struct Recorder {
    set: BTreeMap<String, String>,
    asked: RefCell<BTreeSet<String>>,
}

impl Env for Recorder {
    fn var(&self, name: &str) -> Option<String> {
        self.asked.borrow_mut().insert(name.to_owned());
        self.set.get(name).cloned()
    }
}

fn env(set: &[(&str, &str)]) -> Recorder {
    Recorder {
        set: set
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        asked: RefCell::default(),
    }
}

/// The resolved configuration of `settings` (the `tokengate:` section), as text to compare.
fn resolved(settings: &Value, env: &Recorder) -> Result<String, String> {
    let mut section = settings.clone();
    section["secret"] = json!(SECRET);
    let yaml = serde_yaml::to_string(&json!({ "tokengate": section })).unwrap();
    Config::from_yaml(&yaml, env)
        .map(|c| format!("{c:?}"))
        .map_err(|e| e.to_string())
}

/// `value` placed at the table's spelling of a key: `a.b`, `a[].b` (a list), `a.NAME.b` (a
/// mapping with any key).
fn at(path: &str, value: Value) -> Value {
    let mut node = value;
    for segment in path.rsplit('.') {
        node = match segment.strip_suffix("[]") {
            Some(list) => json!({ list: [node] }),
            None if segment == "NAME" => json!({ "g": node }),
            None => json!({ segment: node }),
        };
    }
    node
}

/// What the code says a mapping at `path` may hold, from its refusal of an unknown key.
fn keys_the_code_reads(path: &str) -> BTreeSet<String> {
    let settings = match path {
        "" => json!({ PROBE: 1 }),
        _ => at(path, json!({ PROBE: 1 })),
    };
    let error = resolved(&settings, &env(&[])).unwrap_err();
    let (_, expected) = error
        .split_once(&format!("unknown field `{PROBE}`, expected "))
        .unwrap_or_else(|| panic!("{path}: {error}"));
    let expected = expected.split(" at line").next().unwrap();
    // tokengate's own keys, before the list of Pingora's it adds for a top-level typo.
    let expected = expected.split(" (or, at the top level").next().unwrap();
    ticked(expected).into_iter().collect()
}

#[test]
fn every_key_the_code_reads_is_documented_and_every_documented_key_is_read() {
    let rows = rows();
    let documented: BTreeSet<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    // Every mapping the table documents keys under, and the top level.
    let mut parents: BTreeSet<String> = BTreeSet::from([String::new()]);
    for key in &documented {
        let mut prefix = String::new();
        for segment in key.split('.') {
            if !prefix.is_empty() {
                parents.insert(prefix.clone());
                prefix.push('.');
            }
            prefix.push_str(segment);
        }
    }
    for parent in &parents {
        let children: BTreeSet<String> = documented
            .iter()
            .filter_map(|k| match parent.as_str() {
                "" => Some(k.split('.').next().unwrap()),
                p => k.strip_prefix(p)?.strip_prefix('.'),
            })
            .map(|child| {
                child
                    .split('.')
                    .next()
                    .unwrap()
                    .trim_end_matches("[]")
                    .to_owned()
            })
            .filter(|child| child != "NAME")
            .collect();
        if children.is_empty() {
            continue;
        }
        assert_eq!(keys_the_code_reads(parent), children, "keys of `{parent}`");
    }
    assert!(parents.len() > 10, "{parents:?}");
}

#[test]
fn grouped_spellings_are_the_codes() {
    let rows = rows();
    let documented: BTreeSet<(String, String)> = rows
        .iter()
        .filter_map(|r| Some((r.grouped.clone()?, r.key.clone())))
        .collect();
    let code: BTreeSet<(String, String)> = grouped()
        .into_iter()
        .map(|(nested, flat)| (nested, flat.to_owned()))
        .collect();
    assert_eq!(documented, code);
}

#[test]
fn each_documented_default_is_the_one_the_code_uses() {
    // Sections that exist only with these set.
    let needs = |key: &str| match key.split('.').next() {
        Some("redis") => Some(json!({"redis": {"url": "redis://127.0.0.1:1"}})),
        Some("tracing") => Some(json!({"tracing": {"endpoint": "http://127.0.0.1:1/v1/traces"}})),
        Some("authorize") => Some(json!({"authorize": {"listen": "127.0.0.1:9191"}})),
        Some("cookie") => Some(json!({"cookie": {"name": "session"}})),
        _ => Some(json!({})),
    };
    let mut checked = 0;
    for row in rows() {
        let Some(default) = &row.default else {
            continue;
        };
        // Lists, named groups and sections that need files are checked where they are used.
        let needs_files = ["tls.", "signing."].iter().any(|s| row.key.starts_with(s));
        if row.key.contains("[]") || row.key.contains("NAME") || needs_files {
            continue;
        }
        let base = needs(&row.key).unwrap();
        let value: Value = serde_yaml::from_str(default).unwrap();
        let mut set = base.clone();
        merge(&mut set, at(&row.key, value));
        let without = resolved(&base, &env(&[])).unwrap();
        let with = resolved(&set, &env(&[])).unwrap_or_else(|e| panic!("{}: {e}", row.key));
        assert_eq!(with, without, "`{}: {default}` is not the default", row.key);
        for var in &row.env {
            let from_env = resolved(&base, &env(&[(var, default)])).unwrap();
            assert_eq!(from_env, without, "`{var}={default}` is not the default");
        }
        checked += 1;
    }
    assert!(checked >= 40, "only {checked} defaults checked");
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (k, v) in from {
                merge(into.entry(k).or_insert(Value::Null), v);
            }
        }
        (into, from) => *into = from,
    }
}

#[test]
fn every_environment_variable_the_code_reads_is_documented() {
    let documented: BTreeSet<String> = rows().into_iter().flat_map(|r| r.env).collect();
    let recorder = env(&[]);
    resolved(&json!({}), &recorder).unwrap();
    let mut asked = recorder.asked.into_inner();
    // The TLS listener's address is read once a certificate makes a TLS listener.
    let tls = env(&[
        ("TOKENGATE_TLS_CERT", "c.pem"),
        ("TOKENGATE_TLS_KEY", "k.pem"),
    ]);
    let _ = resolved(&json!({}), &tls);
    asked.extend(tls.asked.into_inner());
    // The gateways are read once the authorization listener is on.
    let authorize = env(&[("TOKENGATE_AUTHORIZE_LISTEN", "127.0.0.1:9191")]);
    let _ = resolved(&json!({}), &authorize);
    asked.extend(authorize.asked.into_inner());
    assert_eq!(asked, documented);
}

/// A repository file's text.
fn read(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every `tokengate_…` name in `text` that `starts` introduces (a quote, a backtick).
fn metric_names(text: &str, starts: &str) -> BTreeSet<String> {
    text.match_indices(&format!("{starts}tokengate_"))
        .map(|(i, _)| {
            text[i + starts.len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect()
        })
        .collect()
}

#[test]
fn every_metric_is_documented_and_every_documented_one_exported() {
    let exported = metric_names(&read("src/metrics.rs"), "\"");
    let table: String = read("docs/observability.md")
        .lines()
        .filter(|l| l.starts_with("| `tokengate_"))
        .collect::<Vec<_>>()
        .join("\n");
    let documented = metric_names(&table, "`");
    assert_eq!(exported, documented);
}

/// The documents a newcomer reads.
fn documents() -> Vec<String> {
    let mut docs = vec!["README.md".to_owned()];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
    for entry in std::fs::read_dir(dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    docs.sort();
    docs
}

#[test]
fn every_link_in_the_docs_resolves_inside_the_repository() {
    let root = std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).unwrap();
    for doc in documents() {
        let text = read(&doc);
        let dir = root.join(&doc).parent().unwrap().to_owned();
        for (i, _) in text.match_indices("](") {
            let target: String = text[i + 2..].chars().take_while(|c| *c != ')').collect();
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() {
                continue;
            }
            let resolved = std::fs::canonicalize(dir.join(path));
            assert!(
                resolved.as_ref().is_ok_and(|p| p.starts_with(&root)),
                "{doc}: ({target}) does not resolve inside the repository"
            );
        }
    }
}

#[test]
fn pointers_in_configuration_files_name_documents_and_sections_that_exist() {
    let files = [
        "conf/tokengate.yaml",
        "conf/image-app.yaml",
        "k8s/base/tokengate.yaml",
        "k8s/overlays/gateway/deployment.yaml",
        "k8s/overlays/sidecar/deployment.yaml",
        "Dockerfile",
    ];
    let mut seen = 0;
    for file in files {
        let text = read(file);
        assert!(
            !text.contains("README: "),
            "{file}: a pointer without a file name"
        );
        for (i, _) in text.match_indices('(') {
            let inside: String = text[i + 1..].chars().take_while(|c| *c != ')').collect();
            let (doc, heading) = match inside.split_once(": ") {
                Some((doc, heading)) => (doc, Some(heading)),
                None => (inside.as_str(), None),
            };
            if !(doc == "README.md" || doc.starts_with("docs/") && doc.ends_with(".md")) {
                continue;
            }
            seen += 1;
            let target = read(doc);
            if let Some(heading) = heading {
                let found = target.lines().any(|l| {
                    l.starts_with('#') && l.trim_start_matches('#').trim().starts_with(heading)
                });
                assert!(found, "{file}: ({inside}): no such section in {doc}");
            }
        }
    }
    assert!(seen >= 4, "{seen} pointers");
}

#[test]
fn the_development_guide_names_every_test_suite_and_fuzz_target() {
    let guide = read("docs/development.md");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["tests", "fuzz/fuzz_targets"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(".rs") else {
                continue;
            };
            assert!(
                guide.contains(&format!("`{stem}`")),
                "docs/development.md misses `{stem}` ({dir})"
            );
        }
    }
}
