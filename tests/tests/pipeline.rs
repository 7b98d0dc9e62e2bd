//! The conductor end to end, through the stage binaries, on the tiny
//! generated VGG and a small demo dataset: the run folder's contents, the
//! report, the exported model in ONNX Runtime 1.32 agreeing with the
//! fine-tune stage's evaluation through `predict`, stage skipping by
//! fingerprint (no embedding recomputed when only the head changes), earlier
//! run folders left alone, and a failing stage reported with its log and
//! resumed from on the next run; a run without fine-tuning predicting with
//! the head stage's `model.onnx`.
//!
//! Needs the stage binaries of this workspace's debug build (`cargo test
//! --workspace` builds them; `cargo build --workspace --bins` otherwise), the
//! ONNX Runtime library and the training venv (`cargo xtask setup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dataset::{Dataset, Split};
use pipeline::{Experiment, Options, StageStatus};

const EXPERIMENT: &str = r#"
name = "e2e"
[data]
demo = { per_class = 8, width = 48, height = 40, seed = 5, broken_files = true }
shorter_side = 36
[model]
spec = "MODEL"
[head]
hidden = [16]
epochs = 8
batch_size = 16
[finetune]
epochs = 2
batch_size = 8
learning_rate = 1e-3
"#;

/// `target/debug`, where cargo put this workspace's binaries.
fn bin_dir() -> PathBuf {
    let dir = e2e_tests::bin_dir();
    for bin in ["ingest", "features", "head", "finetune"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            dir.join(bin).display()
        );
    }
    dir
}

fn experiment(overrides: &[&str]) -> Experiment {
    let model = concat!(env!("CARGO_MANIFEST_DIR"), "/../data-specs/models/tiny-vgg.toml");
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Experiment::parse(&EXPERIMENT.replace("MODEL", model), &overrides).unwrap()
}

fn options(root: &Path, experiment: Experiment) -> Options {
    Options {
        experiment,
        runs_root: root.join("runs"),
        bin_dir: bin_dir(),
        force: Vec::new(),
        features_cache: Some(root.join("feature-cache")),
        echo: false,
    }
}

fn statuses(outcome: &pipeline::Outcome) -> BTreeMap<String, StageStatus> {
    outcome.record.stages.iter().map(|s| (s.name.clone(), s.status)).collect()
}

/// Every file under `dir` with its bytes: to show a folder did not change.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walk(dir).into_iter().map(|p| (p.strip_prefix(dir).unwrap().to_owned(), std::fs::read(&p).unwrap())).collect()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

#[test]
fn a_run_folder_holds_everything_and_later_runs_reuse_stages() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();

    // First run: every stage runs.
    let first = pipeline::run(&options(root, experiment(&[]))).unwrap();
    let run = &first.run_dir;
    assert!(statuses(&first).values().all(|s| *s == StageStatus::Ran), "{:?}", statuses(&first));
    for file in [
        "experiment.toml",
        "run.json",
        "report.md",
        "report.html",
        "report.json",
        "logs/ingest.log",
        "logs/features.log",
        "logs/head.log",
        "logs/finetune.log",
        "dataset/dataset.json",
        "dataset/rejects.csv",
        "features/features.json",
        "head/head.safetensors",
        "head/metrics.jsonl",
        "head/evaluation-test.json",
        "finetune/model.onnx",
        "finetune/finetune.json",
        "finetune/evaluation-test.json",
        "finetune/run/metrics.jsonl",
        "plots/head-curves.png",
        "plots/finetune-curves.png",
        "plots/confusion-head.png",
        "plots/confusion-finetune.png",
    ] {
        assert!(run.join(file).is_file(), "{file} is missing from {}", run.display());
    }
    let resolved = Experiment::parse(&std::fs::read_to_string(run.join("experiment.toml")).unwrap(), &[]).unwrap();
    assert_eq!(resolved, experiment(&[]));
    let record = json(&run.join("run.json"));
    assert_eq!(record["stages"].as_array().unwrap().len(), 4);
    let report = json(&run.join("report.json"));
    assert_eq!(report["dataset"]["classes"].as_array().unwrap().len(), 5);
    assert!(!report["dataset"]["rejects"].as_array().unwrap().is_empty(), "the broken demo files are reported");
    let markdown = std::fs::read_to_string(run.join("report.md")).unwrap();
    assert!(markdown.contains("plots/confusion-finetune.png") && markdown.contains("checkers"));
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert_eq!(html.matches("data:image/png;base64,").count(), 4);

    // predict on the test split's original files agrees with the fine-tune
    // stage's evaluation of the same model (both ONNX Runtime 1.32).
    let dataset = Dataset::open(&run.join("dataset")).unwrap();
    let images_root = PathBuf::from(json(&run.join("dataset/dataset.json"))["spec"]["root"].as_str().unwrap());
    let test = dataset.index(Split::Test).unwrap();
    let paths: Vec<PathBuf> = test.iter().map(|r| images_root.join(&r.path)).collect();
    let mut predictor = predict::load(&run.join("finetune/model.onnx"), 1).unwrap();
    let predictions = predictor.predict_images(&paths, 8);
    let correct = predictions
        .iter()
        .zip(&test)
        .filter(|(p, r)| p.as_ref().unwrap().top_k(1)[0].0 == r.label_index as usize)
        .count();
    let evaluation = json(&run.join("finetune/evaluation-test.json"));
    assert_eq!(evaluation["samples"].as_u64().unwrap() as usize, test.len());
    let accuracy = correct as f64 / test.len() as f64;
    assert!((accuracy - evaluation["accuracy"].as_f64().unwrap()).abs() < 1e-9, "predict {accuracy} vs {evaluation}");
    assert_eq!(first.finetune_test_accuracy, evaluation["accuracy"].as_f64());

    // Second run, only head settings changed: no embedding recomputed.
    let cache = root.join("feature-cache");
    let cache_before = snapshot(&cache);
    let run_before = snapshot(run);
    let second = pipeline::run(&options(root, experiment(&["head.epochs=4", "head.seed=3"]))).unwrap();
    let s = statuses(&second);
    assert_eq!(s["ingest"], StageStatus::Skipped);
    assert_eq!(s["features"], StageStatus::Skipped);
    assert_eq!(s["head"], StageStatus::Ran);
    assert_eq!(s["finetune"], StageStatus::Ran, "fine-tuning starts from the new head");
    assert_ne!(second.run_dir, first.run_dir);
    assert!(std::fs::read_to_string(second.run_dir.join("logs/features.log")).unwrap().starts_with("skipped"));
    let cache_after = snapshot(&cache);
    let embeddings = |s: &BTreeMap<PathBuf, Vec<u8>>| {
        s.iter()
            .filter(|(p, _)| p.starts_with("tiny-vgg-flatten-f32"))
            .map(|(p, b)| (p.clone(), b.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(embeddings(&cache_after), embeddings(&cache_before), "embeddings were recomputed");
    assert_eq!(snapshot(run), run_before, "a later run changed an earlier run's folder");

    // Third run, nothing changed: everything skipped; --force reruns one.
    let mut again = options(root, experiment(&["head.epochs=4", "head.seed=3"]));
    let third = pipeline::run(&again).unwrap();
    assert!(statuses(&third).values().all(|s| *s == StageStatus::Skipped), "{:?}", statuses(&third));
    again.force = vec!["head".into()];
    let forced = pipeline::run(&again).unwrap();
    assert_eq!(statuses(&forced)["head"], StageStatus::Ran);
    assert_eq!(statuses(&forced)["features"], StageStatus::Skipped);
}

#[test]
fn a_run_without_fine_tuning_predicts_with_the_head_stage_model() {
    let dir = tempfile::tempdir().unwrap();
    let outcome = pipeline::run(&options(dir.path(), experiment(&["finetune.enabled=false"]))).unwrap();
    let run = &outcome.run_dir;
    assert!(!run.join("finetune").exists());
    assert_eq!(predict::find_model(run).unwrap(), run.join("head/model.onnx"));

    // predict on the test split's original files (image → probabilities in
    // ONNX Runtime 1.32) against the head's own arithmetic on the cached
    // embeddings of the same images (`head predict`, pure Rust).
    let dataset = Dataset::open(&run.join("dataset")).unwrap();
    let images_root = PathBuf::from(json(&run.join("dataset/dataset.json"))["spec"]["root"].as_str().unwrap());
    let test = dataset.index(Split::Test).unwrap();
    assert!(test.len() >= 3, "too few test images to compare: {}", test.len());
    let paths: Vec<PathBuf> = test.iter().map(|r| images_root.join(&r.path)).collect();
    let mut predictor = predict::load(run, 1).unwrap();
    let from_model = predictor.predict_images(&paths, 8);

    let classes = dataset.classes().to_vec();
    let csv_path = dir.path().join("head-predictions.csv");
    let status = std::process::Command::new(bin_dir().join("head"))
        .args(["predict", "--split", "test", "--top-k"])
        .arg(classes.len().to_string())
        .arg("--head")
        .arg(run.join("head"))
        .arg("--features")
        .arg(run.join("features"))
        .arg("--out")
        .arg(&csv_path)
        .status()
        .unwrap();
    assert!(status.success());
    let mut reader = csv::Reader::from_path(&csv_path).unwrap();
    let mut compared = 0;
    for (row, (record, predicted)) in reader.records().zip(test.iter().zip(&from_model)) {
        let row = row.unwrap();
        assert_eq!(&row[0], record.content_id.as_str());
        let predicted = predicted.as_ref().unwrap();
        for pair in 0..classes.len() {
            let class = classes.iter().position(|c| c == &row[3 + 2 * pair]).unwrap();
            let p_head: f32 = row[4 + 2 * pair].parse().unwrap();
            let p_model = predicted.probabilities[class];
            // The head's CSV keeps 6 digits; the stored images go through
            // the same decode and preprocessing in both paths.
            assert!((p_head - p_model).abs() < 1e-4, "{}: class {class}: head {p_head}, model {p_model}", record.path);
        }
        compared += 1;
    }
    assert_eq!(compared, test.len());
}

#[test]
fn a_failing_stage_names_its_log_and_the_next_run_continues_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let broken = options(root, experiment(&["finetune.unfreeze=block9"]));
    let err = pipeline::run(&broken).unwrap_err();
    let failed = err.downcast_ref::<pipeline::StageFailed>().unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!(failed.stage, "finetune");
    assert!(failed.log.is_file());
    assert!(err.to_string().contains(&failed.log.display().to_string()), "{err}");
    let log = std::fs::read_to_string(&failed.log).unwrap();
    assert!(log.contains("block9"), "the log holds the stage's error:\n{log}");
    let record = json(&failed.run_dir.join("run.json"));
    let stages = record["stages"].as_array().unwrap();
    assert_eq!(stages.last().unwrap()["status"], "failed");

    let fixed = pipeline::run(&options(root, experiment(&[]))).unwrap();
    let s = statuses(&fixed);
    assert_eq!(
        (s["ingest"], s["features"], s["head"]),
        (StageStatus::Skipped, StageStatus::Skipped, StageStatus::Skipped)
    );
    assert_eq!(s["finetune"], StageStatus::Ran);
}
