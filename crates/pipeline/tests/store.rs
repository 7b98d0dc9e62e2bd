//! The stage store under concurrency and damage, through the real stage
//! binaries on the tiny generated VGG: two conductors at once on one store,
//! a tampered entry run again, stale staging folders removed, `gc`, and a
//! killed conductor taking its running stage with it.
//!
//! Needs the workspace's debug binaries (`cargo build --workspace --bins`),
//! the ONNX Runtime library and the training venv (`cargo xtask setup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pipeline::{Experiment, Options, StageStatus};

const EXPERIMENT: &str = r#"
name = "store"
[data]
demo = { per_class = 6, width = 40, height = 36, seed = 3, broken_files = false }
shorter_side = 32
[model]
spec = "MODEL"
[head]
hidden = [8]
epochs = 3
batch_size = 16
[finetune]
epochs = 1
batch_size = 8
"#;

fn model_spec() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml").to_owned()
}

/// `target/debug`, where cargo put the workspace's binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_owned();
    for bin in ["pipeline", "ingest", "features", "head", "finetune"] {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: build the workspace's binaries first (cargo build --workspace --bins)",
            dir.join(bin).display()
        );
    }
    dir
}

fn options(root: &Path, overrides: &[&str]) -> Options {
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Options {
        experiment: Experiment::parse(&EXPERIMENT.replace("MODEL", &model_spec()), &overrides).unwrap(),
        runs_root: root.join("runs"),
        bin_dir: bin_dir(),
        force: Vec::new(),
        features_cache: Some(root.join("cache")),
        echo: false,
    }
}

fn statuses(outcome: &pipeline::Outcome) -> BTreeMap<String, StageStatus> {
    outcome.record.stages.iter().map(|s| (s.name.clone(), s.status)).collect()
}

fn store_entry(outcome: &pipeline::Outcome, stage: &str) -> PathBuf {
    outcome.record.stages.iter().find(|s| s.name == stage).unwrap().output.clone()
}

/// Every file under `dir` with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    walkdir::WalkDir::new(dir)
        .sort_by_file_name()
        .into_iter()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().is_file())
        .map(|e| (e.path().strip_prefix(dir).unwrap().to_owned(), std::fs::read(e.path()).unwrap()))
        .collect()
}

/// Hidden names in the store other than the lock folder: leftovers.
fn leftovers(store: &Path) -> Vec<String> {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') && n != ".locks")
        .collect()
}

#[test]
fn two_conductors_on_one_store_both_succeed_with_identical_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let experiment = dir.path().join("e.toml");
    std::fs::write(&experiment, EXPERIMENT.replace("MODEL", &model_spec())).unwrap();
    let start = || {
        Command::new(bin_dir().join("pipeline"))
            .current_dir(dir.path())
            .args(["--experiment", "e.toml", "--runs", "runs", "--features-cache", "cache"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (start(), start());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(a.status.success(), "the first conductor failed:\n{}", stderr(&a));
    assert!(b.status.success(), "the second conductor failed:\n{}", stderr(&b));
    for output in [&a, &b] {
        let text = stderr(output);
        assert!(!text.contains("rror:") && !text.contains("panicked"), "{text}");
    }

    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    for stage_dir in ["dataset", "features", "head", "finetune"] {
        assert_eq!(snapshot(&runs[0].join(stage_dir)), snapshot(&runs[1].join(stage_dir)), "{stage_dir} differs");
    }
    // Each stage ran once: the second conductor waited, then reused it.
    let records: Vec<pipeline::RunRecord> =
        runs.iter().map(|r| contracts::read(&r.join("run.json")).unwrap()).collect();
    for stage in ["ingest", "features", "head", "finetune"] {
        let ran =
            records.iter().flat_map(|r| &r.stages).filter(|s| s.name == stage && s.status == StageStatus::Ran).count();
        assert_eq!(ran, 1, "{stage} ran {ran} times");
    }
    assert!(leftovers(&dir.path().join("runs/.store")).is_empty(), "{:?}", leftovers(&dir.path().join("runs/.store")));
}

#[test]
fn a_tampered_entry_runs_again_and_stale_staging_folders_go() {
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path(), &["finetune.enabled=false"]);
    let first = pipeline::run(&options).unwrap();
    assert!(statuses(&first).values().all(|s| *s == StageStatus::Ran), "{:?}", statuses(&first));
    let head = store_entry(&first, "head");
    let features = store_entry(&first, "features");
    let ingest = store_entry(&first, "ingest");
    // head.json records timings: the weights and the file list must match.
    let weights_and_names = |files: BTreeMap<PathBuf, Vec<u8>>| {
        let weights = files[Path::new("head.safetensors")].clone();
        (files.into_keys().collect::<Vec<_>>(), weights)
    };
    let head_before = weights_and_names(snapshot(&head));

    // A deleted file in one entry, a changed size in another, and what a
    // killed producer left beside a third (skipped) entry.
    std::fs::remove_file(head.join("metrics.jsonl")).unwrap();
    let mut text = std::fs::read(features.join("features.json")).unwrap();
    text.extend_from_slice(b"\n");
    std::fs::remove_file(features.join("features.json")).unwrap(); // the run folder keeps its link
    std::fs::write(features.join("features.json"), &text).unwrap();
    let store = ingest.parent().unwrap().to_owned();
    let ingest_name = ingest.file_name().unwrap().to_string_lossy().into_owned();
    let stale = [
        store.join(format!(".{ingest_name}.4000001.partial")),
        store.join(format!("..{ingest_name}.4000001.partial.partial")),
    ];
    for path in &stale {
        std::fs::create_dir_all(path).unwrap();
        std::fs::write(path.join("half-written"), b"x").unwrap();
    }

    let second = pipeline::run(&options).unwrap();
    let s = statuses(&second);
    assert_eq!(s["ingest"], StageStatus::Skipped);
    assert_eq!(s["features"], StageStatus::Ran);
    assert_eq!(s["head"], StageStatus::Ran);
    let note = &second.record.stages.iter().find(|s| s.name == "head").unwrap().note;
    assert!(note.contains("no longer verified") && note.contains("metrics.jsonl"), "{note}");
    assert!(weights_and_names(snapshot(&head)) == head_before, "the rerun head differs from the first");
    assert!(stale.iter().all(|p| !p.exists()), "a stale staging folder stayed");
    assert!(leftovers(&store).is_empty(), "{:?}", leftovers(&store));

    // gc keeps what a run refers to ...
    let gc_options = pipeline::GcOptions {
        runs_root: dir.path().join("runs"),
        features_cache: Some(dir.path().join("cache")),
        dry_run: true,
    };
    let report = pipeline::gc(&gc_options).unwrap();
    assert!(report.removed.is_empty(), "{:?}", report.removed);
    // ... and removes everything once no run refers to it.
    for run in [&first.run_dir, &second.run_dir] {
        std::fs::remove_dir_all(run).unwrap();
    }
    let report = pipeline::gc(&pipeline::GcOptions { dry_run: false, ..gc_options }).unwrap();
    let what: Vec<&str> = report.removed.iter().map(|r| r.what).collect();
    assert_eq!(what.iter().filter(|w| **w == "store entry").count(), 3, "{:?}", report.removed);
    assert_eq!(what.iter().filter(|w| **w == "feature cache").count(), 1, "{:?}", report.removed);
    assert!(report.bytes() > 0 && !ingest.exists() && !head.exists());
}

/// The state letter of a process in `/proc` (`Z` zombie), `None` once gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next())
}

fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap_or_default();
            let fields: Vec<&str> =
                stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
            fields.get(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// A conductor whose `ingest` is a script that writes a tick into its
/// output folder every 50 ms, forever: killed with `signal` once a tick is
/// there. Returns the stage's pid, the staging folder and the conductor's
/// output (and the folder that holds it all).
fn kill_conductor_during_a_stage(signal: &str) -> (u32, PathBuf, std::process::Output, tempfile::TempDir) {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().to_owned();
    let bins = dir.join("bin");
    std::fs::create_dir_all(&bins).unwrap();
    let script = bins.join("ingest");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a; do out=$a; done\nwhile :; do echo tick >> \"$out/ticks\"; sleep 0.05; done\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.join("e.toml"), EXPERIMENT.replace("MODEL", &model_spec())).unwrap();
    let conductor = Command::new(bin_dir().join("pipeline"))
        .current_dir(&dir)
        .args(["--experiment", "e.toml", "--runs", "runs", "--features-cache", "cache", "--bin-dir"])
        .arg(&bins)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let store = dir.join("runs/.store");
    let deadline = Instant::now() + Duration::from_secs(60);
    let staging = loop {
        assert!(Instant::now() < deadline, "the fake ingest never started");
        let found = std::fs::read_dir(&store).ok().and_then(|entries| {
            entries
                .flatten()
                .map(|e| e.path())
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(".ingest-") && p.join("ticks").exists())
        });
        if let Some(found) = found {
            break found;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stage = children_of(conductor.id());
    assert_eq!(stage.len(), 1, "the conductor's children: {stage:?}");
    let status = Command::new("kill").args([signal, &conductor.id().to_string()]).status().unwrap();
    assert!(status.success());
    let output = conductor.wait_with_output().unwrap();
    (stage[0], staging, output, temp)
}

fn assert_stage_stopped(stage: u32, staging: &Path) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while process_state(stage).is_some_and(|s| s != 'Z') {
        assert!(Instant::now() < deadline, "the stage {stage} outlived its conductor by 2 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A grandchild (the script's sleep) may finish its 50 ms.
    std::thread::sleep(Duration::from_millis(200));
    let ticks = std::fs::read(staging.join("ticks")).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(std::fs::read(staging.join("ticks")).unwrap(), ticks, "the stage still writes");
    let entry = staging
        .parent()
        .unwrap()
        .join(staging.file_name().unwrap().to_string_lossy().trim_start_matches('.').split('.').next().unwrap());
    assert!(!entry.exists(), "a killed stage's output was published");
}

#[test]
fn a_conductor_killed_with_sigkill_takes_its_stage_along() {
    let (stage, staging, _, _dir) = kill_conductor_during_a_stage("-KILL");
    assert_stage_stopped(stage, &staging);
}

#[test]
fn a_conductor_stopped_with_sigterm_stops_its_stage_and_says_so() {
    let (stage, staging, output, _dir) = kill_conductor_during_a_stage("-TERM");
    assert_eq!(output.status.code(), Some(128 + 15));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("terminated (SIGTERM)"), "{stderr}");
    assert_stage_stopped(stage, &staging);
}
