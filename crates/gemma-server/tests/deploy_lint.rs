//! Lints the Dockerfile and the Kubernetes manifest (no container engine runs here): the Dockerfile is
//! multi-stage, runs as a non-root user, exposes 8080, checks `/health` and copies a binary this workspace
//! builds; the manifest parses (a block-YAML reader below) into a Deployment and a Service with probes on
//! `/health`, resource limits and `runAsNonRoot`.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Dockerfile instructions with their continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        current.push_str(t.trim_end_matches('\\').trim());
        current.push(' ');
        if !t.ends_with('\\') {
            let (op, rest) = current.trim().split_once(' ').unwrap_or((current.trim(), ""));
            out.push((op.to_ascii_uppercase(), rest.trim().to_string()));
            current.clear();
        }
    }
    assert!(current.is_empty(), "the Dockerfile ends inside a continued line");
    out
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_healthchecked() {
    let text = std::fs::read_to_string(root().join("Dockerfile")).expect("Dockerfile at the workspace root");
    let ins = instructions(&text);
    let known =
        ["FROM", "WORKDIR", "COPY", "RUN", "ENV", "VOLUME", "USER", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"];
    for (op, _) in &ins {
        assert!(known.contains(&op.as_str()), "unexpected instruction {op}");
    }
    let stages: Vec<&str> = ins.iter().filter(|(op, _)| op == "FROM").map(|(_, a)| a.as_str()).collect();
    assert_eq!(stages.len(), 2, "a builder and a runtime stage: {stages:?}");
    assert!(stages[0].starts_with("rust:") && stages[0].ends_with(" AS builder"), "{stages:?}");
    assert!(stages[1].contains("-slim"), "the runtime is a slim image: {stages:?}");

    // Everything after the last FROM is the runtime stage.
    let last_from = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let runtime = &ins[last_from..];
    let users: Vec<&str> = runtime.iter().filter(|(op, _)| op == "USER").map(|(_, a)| a.as_str()).collect();
    let user = users.last().expect("the runtime stage sets USER");
    let name = user.split(':').next().unwrap();
    assert!(name != "root" && name != "0", "the runtime runs as {user}");
    assert!(runtime.iter().any(|(op, a)| op == "EXPOSE" && a.split_whitespace().any(|p| p == "8080")));
    assert!(runtime.iter().any(|(op, a)| op == "HEALTHCHECK" && a.contains("/health")));
    assert!(runtime.iter().any(|(op, a)| op == "ENV" && a.starts_with("GEMMA_MODELS=")));

    // The copied binary is one the builder builds from this workspace.
    let copy = runtime
        .iter()
        .find(|(op, a)| op == "COPY" && a.starts_with("--from=builder"))
        .map(|(_, a)| a.as_str())
        .expect("the runtime copies the binary from the builder");
    let src = copy.split_whitespace().nth(1).unwrap();
    let bin = src.rsplit('/').next().unwrap();
    assert!(src.contains("/target/release/"), "{src}");
    let build = ins.iter().find(|(op, a)| op == "RUN" && a.contains("cargo build")).expect("a cargo build");
    assert!(build.1.contains("--release") && build.1.contains(&format!("--bin {bin}")), "{}", build.1);
    let manifest = std::fs::read_to_string(root().join("crates").join(bin).join("Cargo.toml")).expect("the crate");
    assert!(manifest.contains(&format!("name = \"{bin}\"")), "crates/{bin} builds a binary named {bin}");
    let entry = runtime.iter().find(|(op, _)| op == "ENTRYPOINT").expect("an ENTRYPOINT");
    let entry: Vec<String> = serde_json::from_str(&entry.1).expect("ENTRYPOINT in exec form");
    assert_eq!(entry[0], format!("/usr/local/bin/{bin}"));
    assert!(copy.ends_with(&format!("/usr/local/bin/{bin}")));
}

/// A reader for the block YAML Kubernetes manifests use: mappings, sequences (`- `), scalars (plain or
/// quoted), flow sequences of scalars, comments and `---` between documents. Anything else panics.
struct Yaml<'a> {
    lines: Vec<(usize, &'a str)>,
    at: usize,
}

impl<'a> Yaml<'a> {
    fn documents(text: &'a str) -> Vec<Value> {
        text.split("\n---")
            .map(|doc| {
                let lines = doc
                    .lines()
                    .map(|l| l.split(" #").next().unwrap().trim_end())
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#') && l.trim() != "---")
                    .map(|l| (l.len() - l.trim_start().len(), l.trim_start()))
                    .collect();
                let mut y = Yaml { lines, at: 0 };
                let v = y.block(0);
                assert_eq!(y.at, y.lines.len(), "unparsed YAML from line {:?}", y.lines.get(y.at));
                v
            })
            .collect()
    }

    fn block(&mut self, indent: usize) -> Value {
        match self.lines.get(self.at) {
            Some(&(i, l)) if i == indent && (l == "-" || l.starts_with("- ")) => self.sequence(indent),
            Some(&(i, _)) if i == indent => self.mapping(indent),
            _ => Value::Null,
        }
    }

    fn sequence(&mut self, indent: usize) -> Value {
        let mut items = Vec::new();
        while let Some(&(i, l)) = self.lines.get(self.at) {
            if i != indent || !(l == "-" || l.starts_with("- ")) {
                assert!(i <= indent, "bad indentation at {l:?}");
                break;
            }
            let rest = l[1..].trim_start();
            if rest.is_empty() {
                self.at += 1;
                let next = self.lines.get(self.at).map_or(0, |l| l.0);
                items.push(self.block(next));
            } else if rest.contains(": ") || rest.ends_with(':') {
                // "- key: value" opens a mapping whose keys sit two columns in.
                self.lines[self.at] = (indent + 2, rest);
                items.push(self.mapping(indent + 2));
            } else {
                self.at += 1;
                items.push(scalar(rest));
            }
        }
        Value::Array(items)
    }

    fn mapping(&mut self, indent: usize) -> Value {
        let mut map = Map::new();
        while let Some(&(i, l)) = self.lines.get(self.at) {
            if i != indent {
                assert!(i < indent, "bad indentation at {l:?}");
                break;
            }
            let (key, value) = match l.split_once(": ") {
                Some((k, v)) => (k, v.trim()),
                None => (l.strip_suffix(':').unwrap_or_else(|| panic!("not a mapping entry: {l:?}")), ""),
            };
            self.at += 1;
            let value = if value.is_empty() {
                match self.lines.get(self.at) {
                    Some(&(next, n)) if next > indent || (next == indent && n.starts_with("- ")) => self.block(next),
                    _ => Value::Null,
                }
            } else {
                scalar(value)
            };
            assert!(map.insert(key.to_string(), value).is_none(), "duplicate key {key}");
        }
        Value::Object(map)
    }
}

fn scalar(s: &str) -> Value {
    if let Some(inner) = s.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
        return Value::Array(inner.split(',').map(str::trim).filter(|s| !s.is_empty()).map(scalar).collect());
    }
    if let Some(q) = s.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Value::String(q.to_string());
    }
    match s {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        _ => s.parse::<i64>().map_or_else(|_| Value::String(s.to_string()), Value::from),
    }
}

#[test]
fn the_yaml_reader_reads_what_manifests_use() {
    let docs = Yaml::documents(
        "a: 1\nb:\n  c: \"x\" # note\n  d: [\"p\", q]\ne:\n  - name: n\n    v: true\n  - plain\n---\nf: g\n",
    );
    assert_eq!(docs.len(), 2);
    assert_eq!(
        docs[0],
        serde_json::json!({"a": 1, "b": {"c": "x", "d": ["p", "q"]}, "e": [{"name": "n", "v": true}, "plain"]})
    );
    assert_eq!(docs[1], serde_json::json!({"f": "g"}));
}

#[test]
fn kubernetes_manifest_has_probes_limits_and_a_non_root_user() {
    let text = std::fs::read_to_string(root().join("deploy/kubernetes.yaml")).expect("deploy/kubernetes.yaml");
    let docs = Yaml::documents(&text);
    let kind = |k: &str| docs.iter().find(|d| d["kind"] == k).unwrap_or_else(|| panic!("no {k}")).clone();
    let deployment = kind("Deployment");
    let service = kind("Service");
    assert_eq!(deployment["apiVersion"], "apps/v1");
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    assert_eq!(&deployment["spec"]["selector"]["matchLabels"], labels);
    assert_eq!(&service["spec"]["selector"], labels, "the Service selects the Deployment's pods");

    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert!(pod["securityContext"]["runAsUser"].as_i64().unwrap() > 0);
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["runAsNonRoot"], true);
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    let port = &container["ports"][0];
    assert_eq!(port["containerPort"], 8080);
    for probe in ["readinessProbe", "livenessProbe"] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"], "/health", "{probe}");
        assert!(get["port"] == port["name"] || get["port"] == port["containerPort"], "{probe} uses the server's port");
    }
    for r in ["cpu", "memory"] {
        assert!(container["resources"]["limits"][r].is_string(), "a {r} limit");
        assert!(container["resources"]["requests"][r].is_string(), "a {r} request");
    }
    let env = container["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "GEMMA_MODELS" && e["value"] == "/models"));
    let mounts = container["volumeMounts"].as_array().unwrap();
    assert!(mounts.iter().any(|m| m["mountPath"] == "/models"));
    // Every mount names a volume of the pod, and the flags are the server's.
    let volumes: Vec<&Value> = pod["volumes"].as_array().unwrap().iter().map(|v| &v["name"]).collect();
    assert!(mounts.iter().all(|m| volumes.contains(&&m["name"])));
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            ["--model", "--parallel", "--ctx", "--api-key-file", "--threads", "--config"].contains(flag),
            "{flag} is not a gemma-server flag"
        );
    }
    assert_eq!(service["spec"]["ports"][0]["targetPort"], port["name"]);
}
