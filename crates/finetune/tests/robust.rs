//! The stage against crashes, races and hand edits, through `finetune
//! smoke` (the whole stage on random data, in seconds): two processes in
//! one output folder both succeed with the bytes of a lone run; what a
//! killed process leaves (temporaries, half-made artifacts, checkpoints
//! the state does not name) is gone after the next run; a corrupt or
//! hand-edited `state.json` or checkpoint is an error naming the file,
//! never a panic.
//!
//! Needs the training venv and the ONNX Runtime library, like
//! `tests/training.rs` (`cargo xtask setup`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_finetune");
const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml");
/// Above the kernel's largest process id: never a running process.
const DEAD_PID: u32 = 999_999_999;

fn smoke(out: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .args(["smoke", "--model-spec", TINY, "--out", out.to_str().unwrap(), "--threads", "1"])
        .args(["--examples", "8", "--classes", "3", "--hidden", "4", "--epochs", "2", "--batch-size", "4"])
        .arg("--allow-random-head");
    command
}

fn run_ok(out: &Path) -> Output {
    let output = smoke(out).output().unwrap();
    assert!(output.status.success(), "finetune smoke failed:\n{}", String::from_utf8_lossy(&output.stderr));
    output
}

/// Fails, says why on stderr, and does not panic.
fn run_err(out: &Path) -> String {
    let output = smoke(out).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "finetune smoke should have failed:\n{stderr}");
    assert!(!stderr.contains("panicked"), "a panic instead of an error:\n{stderr}");
    stderr
}

/// Every file below `dir`, relative, sorted.
fn files(dir: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                out.insert(path.strip_prefix(dir).unwrap().to_owned());
            }
        }
    }
    out
}

fn artifacts_dir(out: &Path) -> PathBuf {
    let root = out.join("artifacts");
    std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap()
}

#[test]
fn two_processes_in_one_output_folder_both_succeed_with_the_bytes_of_a_lone_run() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("lone");
    run_ok(&lone);
    let shared = dir.path().join("shared");
    let spawn = || smoke(&shared).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let (a, b) = (spawn(), spawn());
    for child in [a, b] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(files(&shared), files(&lone), "the same files, no leftovers");
    let model = |out: &Path| std::fs::read(out.join("model.onnx")).unwrap();
    assert!(model(&shared) == model(&lone), "model.onnx differs");
    assert_eq!(metrics(&shared), metrics(&lone));
}

/// `metrics.jsonl` without the fields that measure time.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(out.join("run/metrics.jsonl")).unwrap();
    let mut records: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for record in &mut records {
        let fields = record.as_object_mut().unwrap();
        fields.retain(|k, _| !k.contains("seconds") && !k.ends_with("_per_second"));
        assert!(fields.contains_key("train_loss"));
    }
    records
}

/// kill -9 at spread-out instants (model resolution, artifact generation,
/// training, export), each time in the same folder, then one run to the
/// end: the files and bytes of a run never interrupted.
#[test]
fn killed_at_any_instant_then_rerun_ends_with_the_files_of_a_lone_run() {
    let dir = tempfile::tempdir().unwrap();
    let lone = dir.path().join("lone");
    let started = std::time::Instant::now();
    run_ok(&lone);
    let lone_ms = started.elapsed().as_millis() as u64;
    let out = dir.path().join("killed");
    let mut rng = train_kit::SplitMix64::new(17);
    let mut killed = 0;
    for _ in 0..10 {
        let delay = 50 + rng.next_u64() % (lone_ms * 3 / 4).max(100);
        let mut child = smoke(&out).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    assert!(killed >= 2, "only {killed} of 10 runs were killed before they ended");
    eprintln!("{killed} of 10 runs killed (a lone run takes {lone_ms} ms)");
    run_ok(&out);
    assert_eq!(files(&out), files(&lone), "the same files, no leftovers");
    let model = |out: &Path| std::fs::read(out.join("model.onnx")).unwrap();
    assert!(model(&out) == model(&lone), "model.onnx differs");
    assert_eq!(metrics(&out), metrics(&lone));
}

#[test]
fn what_a_killed_process_left_is_removed_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok(&out);
    let before = files(&out);
    let model = std::fs::read(out.join("model.onnx")).unwrap();
    let checkpoints = out.join("run/checkpoints");
    let latest = std::fs::read_dir(&checkpoints)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("epoch-"))
        .unwrap();

    // What a process killed at various instants leaves behind.
    let planted_files = [
        out.join(format!(".model.onnx.{DEAD_PID}.partial")),
        out.join(format!(".model.logits.onnx.{DEAD_PID}.partial")),
        checkpoints.join(format!(".epoch-0003.ckpt.{DEAD_PID}.partial")),
        // Saved before the state that would have named it.
        checkpoints.join("epoch-0007.ckpt"),
        checkpoints.join("best-epoch-0007.ckpt"),
    ];
    for file in &planted_files {
        std::fs::copy(&latest, file).unwrap();
    }
    let planted_dirs = [
        out.join("artifacts").join(format!(".artifacts-0123456789abcdef.{DEAD_PID}.partial")),
        out.join("artifacts").join(format!(".artifacts-0123456789abcdef.partial-{DEAD_PID}")),
    ];
    for folder in &planted_dirs {
        std::fs::create_dir_all(folder).unwrap();
        std::fs::write(folder.join("training_model.onnx"), b"half").unwrap();
    }

    run_ok(&out);
    for path in planted_files.iter().chain(&planted_dirs) {
        assert!(!path.exists(), "{} is still there", path.display());
    }
    assert_eq!(files(&out), before);
    assert!(std::fs::read(out.join("model.onnx")).unwrap() == model, "model.onnx changed");

    // Artifacts killed half-made under their final name (no manifest) are made again.
    let artifacts = artifacts_dir(&out);
    let manifest = std::fs::read(artifacts.join("artifacts.json")).unwrap();
    std::fs::remove_file(artifacts.join("artifacts.json")).unwrap();
    std::fs::remove_dir_all(out.join("run")).unwrap();
    let stderr = String::from_utf8_lossy(&run_ok(&out).stderr).into_owned();
    assert!(stderr.contains("generated training artifacts"), "{stderr}");
    // The same manifest but for how long generating took.
    let timeless = |bytes: &[u8]| {
        let mut manifest: serde_json::Value = serde_json::from_slice(bytes).unwrap();
        manifest.as_object_mut().unwrap().remove("generation_seconds").expect("the manifest times generation");
        manifest
    };
    assert_eq!(timeless(&std::fs::read(artifacts.join("artifacts.json")).unwrap()), timeless(&manifest));
    assert!(std::fs::read(out.join("model.onnx")).unwrap() == model, "model.onnx changed");
}

#[test]
fn a_corrupt_or_hand_edited_state_or_checkpoint_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    run_ok(&out);
    let state_path = out.join("run/state.json");
    let good: serde_json::Value = serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    let named = state_path.display().to_string();
    let edited = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut state = good.clone();
        edit(&mut state);
        std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
        run_err(&out)
    };

    std::fs::write(&state_path, b"{ \"schema_version\": 1, \"format_vers").unwrap();
    let err = run_err(&out);
    assert!(err.contains(&named), "{err}");
    let err = edited(&|s| s["completed_epochs"] = "two".into());
    assert!(err.contains(&named), "{err}");
    let err = edited(&|s| {
        s["finished"] = serde_json::Value::Null;
        s["completed_epochs"] = 2.into();
    });
    assert!(err.contains(&named) && err.contains("unfinished"), "{err}");
    let err = edited(&|s| {
        s["finished"] = serde_json::Value::Null;
        s["completed_epochs"] = 1.into();
        s["latest_checkpoint"] = "../../state.json".into();
    });
    assert!(err.contains(&named) && err.contains("../../state.json"), "{err}");
    let err = edited(&|s| s["best"] = serde_json::Value::Null);
    assert!(err.contains(&named) && err.contains("disagree"), "{err}");

    // The state is fine but its checkpoint is garbage: the error names the checkpoint.
    let latest = good["latest_checkpoint"].as_str().unwrap().to_owned();
    let checkpoint = out.join("run/checkpoints").join(&latest);
    std::fs::write(&checkpoint, b"not a checkpoint").unwrap();
    let err = edited(&|s| {
        s["finished"] = serde_json::Value::Null;
        s["completed_epochs"] = 1.into();
    });
    assert!(err.contains(&checkpoint.display().to_string()), "{err}");
}
