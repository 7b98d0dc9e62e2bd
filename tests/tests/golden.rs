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

use e2e_tests::digest::digests;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/golden/tiny.digests");
/// Where the run happens: always the same absolute path (see below).
const RUN_DIR: &str = "/tmp/tl-vision-golden";

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
