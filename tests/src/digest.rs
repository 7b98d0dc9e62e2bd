//! A run folder's digests, compared by the golden test with recorded ones
//! and by the chaos suite with an uninterrupted run's. What is digested and
//! what is masked is described in `tests/tests/golden.rs`; a marker's list
//! of outputs (`.stage.json`) keeps each path, and the size and SHA-256 of
//! binary outputs (those of JSON outputs hold the masked timings).

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};

/// JSON fields that measure the run rather than describe its result.
fn volatile(key: &str) -> bool {
    const PARTS: [&str; 10] =
        ["seconds", "per_s", "_at", "peak", "rss", "memory", "schema_version", "threads", "elapsed", "time"];
    PARTS.iter().any(|p| key.contains(p))
}

/// Removes the volatile fields and those named in `also`, at any depth.
fn strip(value: &mut serde_json::Value, also: &[&str]) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|k, _| !volatile(k) && !also.contains(&k.as_str()));
            map.values_mut().for_each(|v| strip(v, also));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip(v, also)),
        _ => {}
    }
}

/// A marker's output entry for a JSON file: its size and digest cover the
/// timings that the file's own digest masks. The fine-tune stage's models
/// and checkpoints keep their size only: their bytes differ between CPUs
/// (see `digest_file`).
fn mask_json_outputs(marker: &mut serde_json::Map<String, serde_json::Value>) {
    let finetune = marker.get("stage").and_then(|s| s.as_str()) == Some("finetune");
    let outputs = marker.get_mut("outputs").and_then(|o| o.as_array_mut()).into_iter().flatten();
    for output in outputs.filter_map(|o| o.as_object_mut()) {
        let path = output.get("path").and_then(|p| p.as_str()).unwrap_or_default();
        if path.ends_with(".json") || path.ends_with(".jsonl") {
            output.remove("size");
            output.remove("sha256");
        } else if finetune && (path.ends_with(".onnx") || path.ends_with(".ckpt")) {
            output.remove("sha256");
        }
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

/// One file's digest, in the canonical form for its kind; `cache_dir`
/// (the project cache's path) and the JSON fields named in `also_masked`
/// are masked in JSON.
pub fn digest_file(path: &Path, cache_dir: &str, also_masked: &[&str]) -> String {
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
                mask_json_outputs(marker);
            });
        }
        values.iter_mut().for_each(|v| strip(v, also_masked));
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

/// Every file of the run folder `run` (logs, the report and `run.json`
/// aside) → the SHA-256 of its canonical form.
pub fn digests(run: &Path) -> BTreeMap<String, String> {
    digests_masking(run, &[])
}

/// [`digests`] with the JSON fields named in `also_masked` removed too.
pub fn digests_masking(run: &Path, also_masked: &[&str]) -> BTreeMap<String, String> {
    // Absolute paths into the project cache (the resolved conv base) differ between machines.
    let cache_dir = runtime::cache_dir().unwrap().to_string_lossy().into_owned();
    let mut out = BTreeMap::new();
    for entry in walkdir::WalkDir::new(run).sort_by_file_name() {
        let entry = entry.unwrap();
        let rel = entry.path().strip_prefix(run).unwrap().to_string_lossy().into_owned();
        let skipped = rel.starts_with("logs") || rel.starts_with("report.") || rel == "run.json";
        if entry.file_type().is_file() && !skipped {
            out.insert(rel, digest_file(entry.path(), &cache_dir, also_masked));
        }
    }
    out
}
