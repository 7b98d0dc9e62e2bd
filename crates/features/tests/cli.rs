//! The `features` binary: its file contract, a run killed mid-way and
//! rerun, and its error messages.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use contracts::features::Dtype;
use dataset::Split;
use feature_cache::{load_split, FeatureCache};
use features::{extract, ExtractOptions};
use spec::Pooling;

const TINY_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml");

/// The binary, with its model cache (TL_CACHE_DIR) in `dir/models` and
/// the ONNX Runtime library this process found (ORT_DYLIB_PATH).
fn features(dir: &Path) -> Command {
    let library = runtime::ort_library().unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_features"));
    cmd.env(runtime::TL_CACHE_DIR, dir.join("models")).env(runtime::ORT_DYLIB_PATH, library);
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(!out.status.success(), "{cmd:?} should fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ["--dataset", "data", "--model", TINY_SPEC, "--cache", "cache", "--out", "out"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for pair in v.iter_mut() {
        if ["data", "cache", "out"].contains(&pair.as_str()) {
            *pair = dir.join(pair.as_str()).display().to_string();
        }
    }
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

#[test]
fn writes_features_json_that_leads_to_the_vectors() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 31);
    let rows = dataset.info().total_rows();
    let out =
        run_ok(features(dir.path()).args(args(dir.path(), &["--batch", "8", "--pooling", "max", "--dtype", "f16"])));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("RANDOM weights"), "prints the weights note: {stdout}");
    assert!(stdout.contains(&format!("0 hits, {rows} computed")) && stdout.contains("images/s"), "{stdout}");

    let info = feature_cache::read_features(&dir.path().join("out")).unwrap();
    assert_eq!(info.model.name, "tiny-vgg");
    assert!(!info.model.pretrained);
    assert_eq!((info.pooling, info.dtype, info.embedding_len), (Pooling::Max, Dtype::F16, 16));
    assert_eq!(info.dataset.fingerprint, dataset.info().fingerprint);
    assert_eq!(info.dataset.classes, dataset.classes());
    assert_eq!(info.splits.values().sum::<usize>(), rows);
    assert_eq!((info.hits, info.computed), (0, rows));
    assert_eq!(info.cache.root, dir.path().join("cache"));
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    assert_eq!(info.model.fingerprint, model.fingerprint);
    assert_eq!(info.preprocess_fingerprint, feature_cache::preprocess_fingerprint(dataset.info(), &model.spec));
    // The raw JSON has the documented field names.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("out/features.json")).unwrap()).unwrap();
    for field in [
        "model",
        "preprocess_fingerprint",
        "pooling",
        "dtype",
        "embedding_len",
        "dataset",
        "cache",
        "splits",
        "hits",
        "computed",
        "seconds",
    ] {
        assert!(json.get(field).is_some(), "features.json lacks {field}");
    }
    assert_eq!(json["pooling"], "max");
    assert_eq!(json["dtype"], "f16");
    assert_eq!(json["model"]["pretrained"], false);

    // The head stage's path: features.json -> dataset + store -> vectors.
    let (dataset, store) = feature_cache::open_features(&info).unwrap();
    for (&split, &n) in &info.splits {
        let loaded = load_split(&dataset, &store, split).unwrap();
        assert_eq!(loaded.features.dim(), (n, 16));
    }
    // Second run: all hits.
    let out = run_ok(features(dir.path()).args(args(dir.path(), &["--pooling", "max", "--dtype", "f16"])));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("{rows} hits, 0 computed")));
}

#[test]
fn a_killed_run_is_finished_by_the_next_one() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 80, 32);
    let rows = dataset.info().total_rows();
    assert!(rows >= 390);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let key = feature_cache::cache_key(dataset.info(), &model.spec, &model.fingerprint, Pooling::Flatten, Dtype::F32);
    let store_dir = dir.path().join("cache").join(key.folder_name());
    let committed = |dir: &Path| -> usize {
        std::fs::read_dir(dir)
            .map(|entries| entries.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".parquet")).count())
            .unwrap_or(0)
    };

    // One image per segment; kill as soon as a first segment is committed.
    let mut child = features(dir.path())
        .args(args(dir.path(), &["--batch", "1"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed(&store_dir) == 0 && Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(Duration::from_millis(20));
    child.kill().ok();
    let status = child.wait().unwrap();
    let segments_before = committed(&store_dir);
    assert!(segments_before > 0, "no segment was committed before the kill (status {status:?})");

    let out = run_ok(features(dir.path()).args(args(dir.path(), &["--batch", "16"])));
    let info = feature_cache::read_features(&dir.path().join("out")).unwrap();
    println!(
        "killed: {status:?}, {segments_before} segments committed; rerun: {} hits, {} computed",
        info.hits, info.computed
    );
    assert_eq!(info.hits + info.computed, rows, "{}", String::from_utf8_lossy(&out.stdout));
    if status.success() {
        assert_eq!(info.computed, 0, "the first run finished before the kill");
    } else {
        assert!(info.computed < rows, "the committed segments were reused");
        assert!(info.hits > 0);
    }
    // Everything reads back, and equals a clean extraction.
    let (dataset, store) = feature_cache::open_features(&info).unwrap();
    let clean = FeatureCache::open(&dir.path().join("clean")).unwrap();
    let summary = extract(&dataset, &model, &clean, &ExtractOptions::default(), &progress::Silent).unwrap();
    let clean_store = clean.store(&summary.key).unwrap();
    for split in splits_with_rows(&dataset) {
        let got = load_split(&dataset, &store, split).unwrap();
        assert_eq!(got.features.nrows(), dataset.rows(split));
        assert_eq!(got, load_split(&dataset, &clean_store, split).unwrap());
    }
    // No partial file survives a finished run of a live process... and none
    // of a dead one after a scan.
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&store_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_empty_split_is_an_error_naming_the_dataset() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    demo_images(&dir.path().join("images"), 3, 33);
    let mut spec = spec::DatasetSpec::for_root(dir.path().join("images").to_string_lossy());
    spec.split = spec::SplitRatios { train: 1.0, validation: 0.0, test: 0.0 };
    spec.size = spec::StoredSize::ShorterSide(36);
    ingest::ingest(&spec, &dir.path().join("data"), &Default::default(), &progress::Silent).unwrap();

    let err = run_err(features(dir.path()).args(args(dir.path(), &["--splits", "train,test"])));
    assert!(err.contains(&dir.path().join("data").display().to_string()), "{err}");
    assert!(err.contains("no rows in the test split") && err.contains("--splits"), "{err}");
    // Without --splits, the splits with rows are extracted.
    run_ok(features(dir.path()).args(args(dir.path(), &[])));
    let info = feature_cache::read_features(&dir.path().join("out")).unwrap();
    assert_eq!(info.splits.keys().copied().collect::<Vec<_>>(), [Split::Train]);
}

#[test]
fn a_spec_naming_a_tensor_the_model_lacks_is_an_error_naming_the_spec() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    demo_dataset(dir.path(), 2, 34);
    let text = std::fs::read_to_string(TINY_SPEC).unwrap();
    let bad = dir.path().join("bad-output.toml");
    std::fs::write(&bad, text.replace("output = \"/features/features.30/MaxPool_output_0\"", "output = \"pool9\""))
        .unwrap();
    let mut a = args(dir.path(), &[]);
    a[3] = bad.display().to_string();
    let err = run_err(features(dir.path()).args(&a));
    assert!(
        err.contains(&bad.display().to_string()) && err.contains("pool9") && err.contains("conv_base.output"),
        "{err}"
    );

    let bad_input = dir.path().join("bad-input.toml");
    std::fs::write(&bad_input, text.replace("name = \"data\"", "name = \"pixels\"")).unwrap();
    a[3] = bad_input.display().to_string();
    let err = run_err(features(dir.path()).args(&a));
    assert!(err.contains(&bad_input.display().to_string()) && err.contains("pixels"), "{err}");

    let mut a = args(dir.path(), &[]);
    a[1] = dir.path().join("no-such-dataset").display().to_string();
    let err = run_err(features(dir.path()).args(&a));
    assert!(err.contains("no-such-dataset") && err.contains("run `ingest` first"), "{err}");
}

#[test]
fn an_invalid_spec_is_one_error_with_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(TINY_SPEC).unwrap();
    let line = text.lines().position(|l| l.starts_with("pooling = ")).unwrap() + 1;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, text.replace("pooling = \"flatten\"", "pooling = \"median\"")).unwrap();
    let mut a = args(dir.path(), &[]);
    a[3] = bad.display().to_string();
    let err = run_err(features(dir.path()).args(&a));
    let expected = format!("error: model spec {}: line {line}, column 11: unknown variant `median`", bad.display());
    assert!(err.starts_with(&expected), "{expected:?} starts {err:?}");
    assert_eq!(err.matches("unknown variant `median`").count(), 1, "said once: {err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}
