//! The golden test: the tiny experiment (`tests/golden/tiny.toml`) through
//! the `pipeline` binary and every stage, its outputs digested and compared
//! with `tests/golden/tiny.digests`, first recorded before the crates were
//! reorganised (re-recorded only for changes that were meant to change
//! outputs, each said in its commit message). A refactor that changes one byte of a dataset shard, a cached
//! vector, the head's weights, the fine-tuned model or a metric fails here.
//!
//! What is digested: every file of the run folder except the logs and the
//! rendered report (they hold timings and dates). JSON files are compared
//! by value with the fields that measure time, memory or throughput removed
//! (and `schema_version`, which contracts may gain); models that ONNX
//! Runtime's training build wrote with their weights to 4 significant digits
//! (its kernels differ between CPUs in the last bits), its checkpoints not at
//! all; everything else byte for byte. The run happens in one fixed folder
//! with relative paths, so the same absolute paths reach the outputs on
//! every machine.
//!
//! Store folder names (`runs/.store/head-<fingerprint>`), the fingerprint in
//! each `.stage.json` marker and the project cache's location are masked in
//! JSON: the conductor's fingerprints cover its own format version and the
//! spelling of each stage's settings file, and the cache differs between
//! machines. What the fingerprints stand for (the settings) is digested in
//! `experiment.toml`.
//!
//! `GOLDEN_KEEP=1` keeps the run (in `/tmp/tl-vision-golden`) for a look;
//! `GOLDEN_UPDATE=1 cargo test -p e2e-tests --test golden` rewrites the
//! digests: only for a change that is meant to change outputs, said in its
//! commit message.
//!
//! Needs the workspace's debug binaries, the ONNX Runtime library and the
//! training venv (`cargo xtask setup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/tiny.digests");
/// Where the run happens: always the same absolute path (see below).
const RUN_DIR: &str = "/tmp/tl-vision-golden";

/// JSON fields that measure the run rather than describe its result.
fn volatile(key: &str) -> bool {
    const PARTS: [&str; 10] =
        ["seconds", "per_s", "_at", "peak", "rss", "memory", "schema_version", "threads", "elapsed", "time"];
    PARTS.iter().any(|p| key.contains(p))
}

fn strip(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !volatile(k));
            map.values_mut().for_each(strip);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
        _ => {}
    }
}

/// Store folder names carry the conductor's fingerprints (`head-<16 hex>`),
/// which cover its own format version: replaced by `head-*`.
fn without_store_fingerprints(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(".store/") {
        let (before, after) = rest.split_at(at + ".store/".len());
        out.push_str(before);
        let name_end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-')).unwrap_or(after.len());
        let name = &after[..name_end];
        match name.rsplit_once('-') {
            Some((stage, hash)) if hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()) => {
                out.push_str(stage);
                out.push_str("-*");
            }
            _ => out.push_str(name),
        }
        rest = &after[name_end..];
    }
    out.push_str(rest);
    out
}

/// A model trained by ONNX Runtime's training build: its structure exactly,
/// its weights to 4 significant digits. The training build's kernels differ
/// between CPUs in the last bits (the same code and inputs gave other
/// checkpoint bytes on another machine, with the same losses to every
/// digit); the stages' own code is deterministic to the bit.
fn trained_model_digest_input(bytes: &[u8]) -> Vec<u8> {
    let mut model = onnx_graph::decode_model(bytes).unwrap();
    let mut rounded = String::new();
    for tensor in &mut onnx_graph::graph_mut(&mut model).unwrap().initializer {
        if tensor.data_type == onnx_graph::proto::data_type::FLOAT {
            let values = onnx_graph::tensor::f32_values(tensor).unwrap();
            rounded.push_str(&tensor.name);
            values.iter().for_each(|v| rounded.push_str(&format!(" {v:.3e}")));
            rounded.push('\n');
            tensor.raw_data.clear();
            tensor.float_data.clear();
        }
    }
    let mut out = onnx_graph::encode_model(&model);
    out.extend_from_slice(rounded.as_bytes());
    out
}

fn digest_file(path: &Path, cache_dir: &str) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path.file_name().unwrap().to_string_lossy();
    let canonical = if name.ends_with(".json") || name.ends_with(".jsonl") {
        let text = without_store_fingerprints(&String::from_utf8(bytes).unwrap().replace(cache_dir, "<CACHE>"));
        let values: Vec<serde_json::Value> = if name.ends_with(".jsonl") {
            text.lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
        } else {
            vec![serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))]
        };
        let mut values = values;
        if name == ".stage.json" {
            values.iter_mut().filter_map(|v| v.as_object_mut()).for_each(|marker| {
                marker.remove("fingerprint");
            });
        }
        values.iter_mut().for_each(strip);
        serde_json::to_vec(&values).unwrap()
    } else if name.ends_with(".ckpt") {
        // ONNX Runtime's training checkpoints: opaque, and their weights are
        // those of the exported model.onnx (digested below) and metrics.
        b"checkpoint present".to_vec()
    } else if path.components().any(|c| c.as_os_str() == "finetune") && name.ends_with(".onnx") {
        trained_model_digest_input(&bytes)
    } else {
        bytes
    };
    hex::encode(Sha256::digest(&canonical))
}

fn digests(run: &Path) -> BTreeMap<String, String> {
    // Absolute paths into the project cache (the resolved conv base) differ between machines.
    let cache_dir = runtime::cache_dir().unwrap().to_string_lossy().into_owned();
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(run).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(run).unwrap().to_string_lossy().into_owned();
        let skipped = rel.starts_with("logs") || rel.starts_with("report.") || rel == "run.json";
        if entry.file_type().is_file() && !skipped {
            out.insert(rel, digest_file(entry.path(), &cache_dir));
        }
    }
    out
}

#[test]
fn the_tiny_experiment_gives_the_recorded_bytes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let bin_dir: PathBuf = std::env::current_exe().unwrap().parent().and_then(Path::parent).unwrap().to_owned();
    assert!(bin_dir.join("pipeline").exists(), "build the workspace's binaries first (cargo build --workspace --bins)");
    // Ingest records the image folder's absolute path (and the dataset's
    // fingerprint covers it), so the run happens in one fixed folder.
    let dir = Path::new(RUN_DIR);
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(root.join("tests/golden/tiny.toml"), dir.join("tiny.toml")).unwrap();
    std::fs::copy(root.join("data-specs/models/tiny-vgg.toml"), dir.join("tiny-vgg.toml")).unwrap();
    let output = Command::new(bin_dir.join("pipeline"))
        .current_dir(dir)
        .args(["--experiment", "tiny.toml", "--runs", "runs", "--features-cache", "cache", "--bin-dir"])
        .arg(&bin_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "pipeline failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let actual = digests(&runs[0]);
    if std::env::var_os("GOLDEN_KEEP").is_none() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    assert!(actual.keys().any(|k| k == "finetune/model.onnx"), "{actual:?}");

    let render = |d: &BTreeMap<String, String>| d.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect::<String>();
    if std::env::var_os("GOLDEN_UPDATE").is_some() {
        std::fs::write(GOLDEN, render(&actual)).unwrap();
        return;
    }
    let expected: BTreeMap<String, String> = std::fs::read_to_string(GOLDEN)
        .unwrap()
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect();
    let differing: Vec<&String> =
        expected.keys().chain(actual.keys()).filter(|k| expected.get(*k) != actual.get(*k)).collect();
    assert!(differing.is_empty(), "outputs differ from the golden digests: {differing:?}");
}
