//! `finetune train`, the batch step, on the tiny generated VGG and a small
//! demo dataset: the three prefix modes agree, the prefix cache is reused,
//! a random head is refused, and a killed run resumes where it stopped and
//! ends with the bytes an uninterrupted run writes.
//!
//! Needs the training venv and the ONNX Runtime library, like
//! `tests/training.rs` (`cargo xtask setup`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use dataset::{Dataset, Split};
use ndarray::Array2;

const BIN: &str = env!("CARGO_BIN_EXE_finetune");
const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml");

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    dataset: PathBuf,
    head: PathBuf,
}

/// Demo images ingested at 36 px, and a head (16 → 8 → 5) trained for one
/// epoch on random vectors: real files in the head stage's format.
fn fixture(per_class: usize) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let images = root.join("images");
    let options = demo::DemoOptions { per_class, width: 48, height: 40, seed: 3, broken_files: false };
    demo::generate(&images, &options).unwrap();
    let mut spec = spec::DatasetSpec::for_root(images.to_str().unwrap());
    spec.size = spec::StoredSize::ShorterSide(36);
    let dataset = root.join("dataset");
    ingest::ingest(&spec, &dataset, &ingest::IngestOptions::default(), &progress::Silent).unwrap();
    let classes = Dataset::open(&dataset).unwrap().classes().to_vec();

    let mut rng = train_kit::SplitMix64::new(9);
    let features = Array2::from_shape_vec((40, 16), rng.uniform_vec(0.0, 1.0, 40 * 16)).unwrap();
    let labels: Vec<usize> = (0..40).map(|i| i % classes.len()).collect();
    let config = head::HeadConfig { hidden: vec![8], epochs: 1, ..Default::default() };
    let mut train = head::InMemory::new(features.view(), &labels);
    let trained = head::train_head(&config, &classes, &mut train, None, &mut |_| {}).unwrap();
    let head = root.join("head");
    head::io::save(&head, &trained).unwrap();
    Fixture { _dir: dir, root, dataset, head }
}

fn command(f: &Fixture, out: &str, extra: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command
        .arg("train")
        .args(["--dataset", f.dataset.to_str().unwrap(), "--head", f.head.to_str().unwrap(), "--model", TINY])
        .args(["--out", f.root.join(out).to_str().unwrap()])
        .args(["--features-cache", f.root.join("feature-cache").to_str().unwrap()])
        .args(["--threads", "1", "--learning-rate", "1e-3", "--batch-size", "12", "--patience", "0", "--seed", "4"])
        .args(extra);
    command
}

fn run(f: &Fixture, out: &str, extra: &[&str]) -> Output {
    let output = command(f, out, extra).output().unwrap();
    assert!(output.status.success(), "finetune train failed:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn losses(run_dir: &Path) -> Vec<f64> {
    std::fs::read_to_string(run_dir.join("run/metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["train_loss"].as_f64().unwrap())
        .collect()
}

/// The exported model's probabilities on the test split, in ONNX Runtime 1.32.
fn test_probabilities(f: &Fixture, model: &Path) -> Array2<f32> {
    let spec = spec::ModelSpec::from_toml(&std::fs::read_to_string(TINY).unwrap()).unwrap();
    let dataset = Dataset::open(&f.dataset).unwrap();
    let mut images = finetune::ImageSource::from_dataset(&dataset, Split::Test, &spec, None).unwrap();
    let indices: Vec<usize> = (0..finetune::BatchSource::len(&images)).collect();
    let batch = finetune::BatchSource::batch(&mut images, &indices, 0).unwrap();
    finetune::run_inference(model, batch.inputs, 1).unwrap()
}

#[test]
fn prefix_modes_agree_and_the_prefix_cache_is_reused() {
    let f = fixture(8);
    let full = run(&f, "full", &["--no-augment", "--prefix", "full", "--epochs", "2"]);
    let cached = run(&f, "cached", &["--no-augment", "--prefix", "cached", "--epochs", "2"]);
    let inference = run(&f, "inference", &["--no-augment", "--prefix", "inference", "--epochs", "2"]);
    for output in [&full, &cached, &inference] {
        assert!(String::from_utf8_lossy(&output.stderr).contains("test accuracy"));
    }

    let (l_full, l_cached, l_inference) =
        (losses(&f.root.join("full")), losses(&f.root.join("cached")), losses(&f.root.join("inference")));
    assert_eq!(l_full.len(), 2);
    for ((a, b), c) in l_full.iter().zip(&l_cached).zip(&l_inference) {
        assert!((a - b).abs() < 1e-4 && (a - c).abs() < 1e-4, "full {a}, cached {b}, inference {c}");
    }
    // The suffix-trained runs export the whole network, which agrees with
    // the whole-graph run.
    let p_full = test_probabilities(&f, &f.root.join("full/model.onnx"));
    for mode in ["cached", "inference"] {
        let p = test_probabilities(&f, &f.root.join(format!("{mode}/model.onnx")));
        let diff = (&p - &p_full).mapv(f32::abs).fold(0f32, |m, v| m.max(*v));
        assert!(diff < 1e-4, "{mode}: max |diff| {diff}");
        let summary = json(&f.root.join(format!("{mode}/finetune.json")));
        assert_eq!(summary["prefix_mode"], mode);
        assert_eq!(summary["split_at"], onnx_graph::vgg::BLOCK4_OUTPUT);
    }
    let summary = json(&f.root.join("full/finetune.json"));
    assert_eq!(summary["prefix_mode"], "full");
    let evaluation = json(&f.root.join("full/evaluation-test.json"));
    let test_rows = Dataset::open(&f.dataset).unwrap().rows(Split::Test) as u64;
    assert_eq!(evaluation["samples"].as_u64(), Some(test_rows));

    // The cached run computed every activation; the inference run found
    // the validation ones; a second cached run in a new folder computes none.
    let stats = |dir: &str| json(&f.root.join(dir).join("finetune.json"))["prefix_cache"].clone();
    assert_eq!(stats("cached")["hits"], 0);
    assert!(stats("cached")["computed"].as_u64().unwrap() > 0);
    run(&f, "cached-again", &["--no-augment", "--prefix", "cached", "--epochs", "1"]);
    assert_eq!(stats("cached-again")["computed"], 0);
    assert_eq!(stats("cached-again")["hits"], stats("cached")["computed"]);
}

#[test]
fn a_random_head_cached_augmentation_and_changed_data_are_refused() {
    let f = fixture(3);
    let output = Command::new(BIN)
        .args(["train", "--dataset", f.dataset.to_str().unwrap(), "--model", TINY])
        .args(["--out", f.root.join("x").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--allow-random-head"));
    let output = command(&f, "y", &["--prefix", "cached"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs augment = false"));
    // Same artifacts and settings but no augmentation: another run, which
    // the folder of an augmented one refuses to resume.
    run(&f, "z", &["--prefix", "full", "--epochs", "1"]);
    let output = command(&f, "z", &["--prefix", "full", "--epochs", "1", "--no-augment"]).output().unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("holds another run"));
}

/// `--config` is the `[finetune]` table (`contracts::finetune::FinetuneConfig`);
/// flags override single fields of it.
#[test]
fn the_config_file_sets_what_flags_do_not_override() {
    let f = fixture(3);
    let config = f.root.join("finetune.toml");
    std::fs::write(&config, "epochs = 4\nwarmup_steps = 2\naugment = false\nprefix = \"full\"\nunfreeze = \"none\"\n")
        .unwrap();
    run(&f, "configured", &["--config", config.to_str().unwrap(), "--epochs", "1"]);
    let summary = json(&f.root.join("configured/finetune.json"));
    assert_eq!(summary["config"]["epochs"], 1);
    assert_eq!(summary["config"]["batch_size"], 12);
    assert_eq!(summary["config"]["schedule"]["warmup_steps"], 2);
    assert_eq!(summary["unfreeze"], "none");
    assert_eq!(summary["prefix_mode"], "full");
    assert_eq!(summary["augment"], serde_json::Value::Null);

    std::fs::write(&config, "epochs = 4\nepoch = 4\n").unwrap();
    let output = command(&f, "misspelt", &["--config", config.to_str().unwrap()]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("fine-tuning settings {}: line 2, column 1: unknown field `epoch`", config.display());
    assert!(stderr.contains(&expected) && stderr.matches("unknown field").count() == 1, "{stderr}");
}

/// `finetune smoke` goes the same way as `train`, on random images and a random head.
#[test]
fn smoke_runs_the_stage_on_random_data() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("smoke");
    let smoke = |extra: &[&str]| {
        Command::new(BIN)
            .args(["smoke", "--model-spec", TINY, "--out", out.to_str().unwrap(), "--threads", "1"])
            .args(["--examples", "4", "--classes", "3", "--hidden", "4", "--epochs", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = smoke(&[]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("random head"));
    let output = smoke(&["--allow-random-head"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("probabilities of the first image"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout).lines().count(), 1, "one metrics line per epoch");
    let summary = json(&out.join("finetune.json"));
    assert_eq!((summary["completed_epochs"].as_u64(), summary["prefix_mode"].as_str()), (Some(1), Some("full")));
    assert!(out.join("model.onnx").exists() && !out.join("evaluation-test.json").exists());
}

/// Augmentation on, prefix as inference: kill the process once an epoch is
/// on disk, run the same command again, and it must resume (not restart)
/// and write the same model as a run that was never interrupted.
#[test]
fn a_killed_run_resumes_and_matches_an_uninterrupted_one() {
    let f = fixture(8);
    let epochs = ["--epochs", "6"];
    run(&f, "whole", &epochs);

    let mut child = command(&f, "killed", &epochs).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let state_path = f.root.join("killed/run/state.json");
    let started = Instant::now();
    let killed_after = loop {
        let done = std::fs::read(&state_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["completed_epochs"].as_u64())
            .unwrap_or(0);
        if done >= 1 {
            child.kill().unwrap();
            break done;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(120), "no epoch finished in 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.wait().unwrap();
    assert!(killed_after < 6, "killed after the last epoch; the test proves nothing");
    assert!(!f.root.join("killed/model.onnx").exists(), "the killed run got as far as exporting");

    let resumed = run(&f, "killed", &epochs);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(stderr.contains("resumed after epoch"), "{stderr}");
    let summary = json(&f.root.join("killed/finetune.json"));
    assert!(summary["resumed_after_epoch"].as_u64().unwrap() >= killed_after);
    assert_eq!(summary["completed_epochs"], 6);
    assert_eq!(losses(&f.root.join("killed")), losses(&f.root.join("whole")));
    let (a, b) = (
        std::fs::read(f.root.join("whole/model.onnx")).unwrap(),
        std::fs::read(f.root.join("killed/model.onnx")).unwrap(),
    );
    assert!(a == b, "the resumed run's model differs from the uninterrupted run's");
}
