//! The architecture, checked: arrows point down (ARCHITECTURE.md draws the
//! same graph). From `cargo metadata`:
//!
//! - a stage crate never depends on another stage crate (they talk through
//!   file contracts, read and written with the shared crates);
//! - shared and foundation crates never depend on a stage or the conductor,
//!   and foundation crates only on foundation crates;
//! - the head's library pulls in no ONNX Runtime, Parquet, Arrow or Python,
//!   however deep (its binary is the `head-cli` crate);
//! - every workspace crate takes its dependencies' versions from the
//!   workspace (`name.workspace = true`) and the workspace's lints;
//! - ARCHITECTURE.md's crate table names each crate's layer and its
//!   workspace dependencies as `Cargo.toml` has them.
//!
//! Dev-dependencies are free: tests sit above everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// Batch steps: each reads and writes files, never another stage's code.
const STAGES: [&str; 6] = ["ingest", "features", "head-cli", "finetune", "predict", "report"];
/// The bottom: types, pure toolkits, atomic writes, progress reporting.
const FOUNDATION: [&str; 5] = ["spec", "train-kit", "contracts", "atomic-file", "progress"];
/// Shared crates between the foundation and the stages.
/// `head` is the head's pure library; its stage binary is `head-cli`.
const SHARED: [&str; 9] =
    ["imaging", "dataset", "feature-cache", "onnx-graph", "runtime", "models", "demo", "head", "compose"];
/// Above the stages.
const TOP: [&str; 3] = ["pipeline", "xtask", "e2e-tests"];
/// What the head's library must never reach.
const HEAVY: [&str; 6] = ["ort", "ort-sys", "parquet", "arrow-array", "pyo3", "numpy"];

fn metadata() -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .expect("cargo metadata runs");
    assert!(output.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Workspace package name → its normal (non-dev, non-build) workspace dependencies.
fn workspace_graph(meta: &Value) -> BTreeMap<String, BTreeSet<String>> {
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let packages: Vec<&Value> =
        meta["packages"].as_array().unwrap().iter().filter(|p| members.contains(p["id"].as_str().unwrap())).collect();
    let names: BTreeSet<String> = packages.iter().map(|p| p["name"].as_str().unwrap().to_owned()).collect();
    packages
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null() && names.contains(d["name"].as_str().unwrap()))
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn every_crate_has_a_place_in_the_layers() {
    let graph = workspace_graph(&metadata());
    let placed: BTreeSet<&str> = STAGES.iter().chain(&FOUNDATION).chain(&SHARED).chain(&TOP).copied().collect();
    for name in graph.keys() {
        assert!(
            placed.contains(name.as_str()),
            "{name} is in no layer: place it in tests/tests/tidy.rs and ARCHITECTURE.md"
        );
    }
}

#[test]
fn arrows_point_down() {
    let graph = workspace_graph(&metadata());
    let mut wrong = Vec::new();
    for (name, deps) in &graph {
        for dep in deps {
            let allowed = if STAGES.contains(&name.as_str()) {
                !STAGES.contains(&dep.as_str()) && !TOP.contains(&dep.as_str())
            } else if FOUNDATION.contains(&name.as_str()) {
                FOUNDATION.contains(&dep.as_str())
            } else if SHARED.contains(&name.as_str()) {
                !STAGES.contains(&dep.as_str()) && !TOP.contains(&dep.as_str())
            } else {
                true
            };
            if !allowed {
                wrong.push(format!("{name} -> {dep}"));
            }
        }
    }
    assert!(wrong.is_empty(), "dependencies that point up or sideways: {wrong:?}");
}

#[test]
fn the_head_library_pulls_in_no_runtime_parquet_or_python() {
    let meta = metadata();
    let nodes = meta["resolve"]["nodes"].as_array().unwrap();
    let by_id: BTreeMap<&str, &Value> = nodes.iter().map(|n| (n["id"].as_str().unwrap(), n)).collect();
    let name_of = |id: &str| -> String {
        let package = meta["packages"].as_array().unwrap().iter().find(|p| p["id"] == id).unwrap();
        package["name"].as_str().unwrap().to_owned()
    };
    let head =
        meta["packages"].as_array().unwrap().iter().find(|p| p["name"] == "head").unwrap()["id"].as_str().unwrap();
    // Everything reachable from the head over normal edges.
    let mut seen = BTreeSet::new();
    let mut stack = vec![head];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        for dep in by_id[id]["deps"].as_array().unwrap() {
            let normal = dep["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            if normal {
                stack.push(dep["pkg"].as_str().unwrap());
            }
        }
    }
    let reached: BTreeSet<String> = seen.iter().map(|id| name_of(id)).collect();
    let heavy: Vec<&str> = HEAVY.iter().copied().filter(|h| reached.contains(*h)).collect();
    assert!(heavy.is_empty(), "the head library reaches {heavy:?}");
    assert!(
        reached.contains("gemm") && reached.contains("contracts"),
        "the walk found the head's real deps: {reached:?}"
    );
}

#[test]
fn versions_and_lints_come_from_the_workspace() {
    let meta = metadata();
    let members: BTreeSet<&str> =
        meta["workspace_members"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let mut problems = Vec::new();
    for package in meta["packages"].as_array().unwrap().iter().filter(|p| members.contains(p["id"].as_str().unwrap())) {
        let manifest_path = package["manifest_path"].as_str().unwrap();
        let manifest: toml::Table = toml::from_str(&std::fs::read_to_string(manifest_path).unwrap()).unwrap();
        let name = package["name"].as_str().unwrap();
        for section in ["dependencies", "dev-dependencies", "build-dependencies"] {
            for (dep, spec) in manifest.get(section).and_then(|s| s.as_table()).into_iter().flatten() {
                let inherited =
                    spec.as_table().and_then(|t| t.get("workspace")).and_then(|w| w.as_bool()) == Some(true);
                if !inherited {
                    problems.push(format!("{name}: [{section}] {dep} does not use `workspace = true`"));
                }
            }
        }
        let lints = manifest.get("lints").and_then(|l| l.get("workspace")).and_then(|w| w.as_bool());
        if lints != Some(true) {
            problems.push(format!("{name}: no `[lints] workspace = true`"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// ARCHITECTURE.md's crate table: `| `name` | layer | job | deps |` rows.
fn documented_crates() -> BTreeMap<String, (String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let text = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    text.lines()
        .filter_map(|line| {
            let cells: Vec<&str> = line.trim().trim_matches('|').split(" | ").map(str::trim).collect();
            let name = cells.first()?.strip_prefix('`')?.strip_suffix('`')?;
            let (layer, deps) = (*cells.get(1)?, *cells.last()?);
            ["foundation", "shared", "stage", "top"]
                .contains(&layer)
                .then(|| (name.to_owned(), (layer.to_owned(), deps.to_owned())))
        })
        .collect()
}

#[test]
fn architecture_md_draws_this_graph() {
    let graph = workspace_graph(&metadata());
    let documented = documented_crates();
    let layer_of = |name: &str| {
        [("stage", &STAGES[..]), ("foundation", &FOUNDATION[..]), ("shared", &SHARED[..]), ("top", &TOP[..])]
            .into_iter()
            .find(|(_, members)| members.contains(&name))
            .map(|(layer, _)| layer)
    };
    let mut wrong = Vec::new();
    for (name, deps) in &graph {
        if name == "xtask" || name == "e2e-tests" {
            continue; // tooling, not in the table
        }
        let Some((layer, listed)) = documented.get(name) else {
            wrong.push(format!("{name}: no row in ARCHITECTURE.md's crate table"));
            continue;
        };
        if Some(layer.as_str()) != layer_of(name) {
            wrong.push(format!("{name}: ARCHITECTURE.md says layer {layer}, tidy.rs {:?}", layer_of(name)));
        }
        if name == "pipeline" {
            continue; // described in words: it sits above everything
        }
        let listed: BTreeSet<String> =
            listed.split(", ").map(str::trim).filter(|d| *d != "—").map(str::to_owned).collect();
        if &listed != deps {
            wrong.push(format!("{name}: ARCHITECTURE.md lists {listed:?}, Cargo.toml has {deps:?}"));
        }
    }
    assert!(documented.len() >= 20, "the table was found: {documented:?}");
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
