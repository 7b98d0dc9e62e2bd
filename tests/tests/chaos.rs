//! The fault-injection suite (issue 11): the pipeline stays correct when a
//! process is killed at any instant, when two conductors share one store,
//! and when a spec or an image folder is hostile.
//!
//! - Kills: for each of ingest, features, head, finetune and the conductor,
//!   start the tiny experiment (`tests/golden/tiny.toml`) on a fresh store,
//!   wait for the target's process, sleep a seeded random fraction of its
//!   duration in an uninterrupted run, `kill -9` it (the conductor's stage
//!   child must die with it), then rerun: exit 0, the run folder's digests
//!   (golden's, `e2e_tests::digest`) equal the uninterrupted run's, no
//!   `.partial` left in the store, the feature cache or the rerun's run
//!   folder, no error in the rerun's output and logs.
//! - Races: two conductors at once on one fresh store: both exit 0, each
//!   with its own run folder, both equal to the uninterrupted run.
//! - Hostile specs: traversal and absolute names, option-like pip
//!   requirements, wrong types, unknown keys, missing sections, huge
//!   numbers, NaN means: the conductor (and ingest, for dataset specs) exits
//!   non-zero with one error line naming the file, and writes nothing
//!   outside its runs folder, its feature cache and the model cache (all in
//!   a sandbox with its own $HOME and $TL_CACHE_DIR; ONNX Runtime's own
//!   device id under $HOME/.cache/Microsoft aside).
//! - Hostile folder: a FIFO, a link to /dev/zero, a link loop, a dangling
//!   link, a non-UTF-8 name, a 100000x1 PNG and a PNG declaring 10^9 pixels
//!   next to good images: ingest finishes within a minute, names each as a
//!   reject with a reason, keeps the good images, and peaks under 500 MB;
//!   the conductor runs the tiny model on the folder to the end.
//!
//! Every check is tried and each failure listed; then the test fails if any
//! did. It prints one summary line; `CHAOS_REPORT=FILE` writes it as JSON.
//! The CI version kills each target twice and races twice;
//! `CHAOS_FULL=1` (`cargo xtask chaos`) kills each 20 times and races 10;
//! `CHAOS_KILLS=N` and `CHAOS_RACES=N` set the counts, `CHAOS_SEED=S` the
//! kill instants.
//!
//! Where: each kill target and the races use one folder of their own
//! (trials in it run one after another, each on a fresh store), because
//! ingest records the image folder's absolute path in the dataset, so a
//! run's bytes equal the reference run's only at the same path; the
//! targets run in parallel threads. Needs the workspace's debug binaries,
//! the ONNX Runtime library and the training venv (`cargo xtask setup`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::digest::digests_masking;
use e2e_tests::process;
use train_kit::SplitMix64;

/// How an output was obtained, not what it is: a rerun reuses what the
/// killed run cached (embeddings, prefix activations, training artifacts)
/// and resumes fine-tuning from its last checkpoint.
const HOW_OBTAINED: [&str; 4] = ["hits", "computed", "artifacts_generated", "resumed_after_epoch"];

fn digests(run: &Path) -> BTreeMap<String, String> {
    digests_masking(run, &HOW_OBTAINED)
}

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// A conductor run of the tiny experiment takes about a second alone; the
/// suite runs several at once on few cores.
const RUN_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the stage child of a killed conductor may take to die.
const ORPHAN_GRACE: Duration = Duration::from_secs(10);
const INGEST_TIMEOUT: Duration = Duration::from_secs(60);
const INGEST_PEAK_LIMIT: u64 = 500 << 20;

/// How many trials: the CI version, or the full one (`CHAOS_FULL=1`).
struct Plan {
    kills_per_target: usize,
    races: usize,
    seed: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let full = std::env::var_os("CHAOS_FULL").is_some_and(|v| !v.is_empty() && v != "0");
        let number = |name: &str, default: u64| {
            std::env::var(name).ok().and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(default)
        };
        Plan {
            kills_per_target: number("CHAOS_KILLS", if full { 20 } else { 2 }) as usize,
            races: number("CHAOS_RACES", if full { 10 } else { 2 }) as usize,
            seed: number("CHAOS_SEED", 11),
        }
    }
}

/// What the suite tried and what failed; one per part, then merged.
#[derive(Default)]
struct Tally {
    /// target → [tried, survived, landed while it ran, landed after it ended].
    kills: BTreeMap<String, [usize; 4]>,
    races_run: usize,
    races_passed: usize,
    hostile_specs_tried: usize,
    hostile_specs_passed: usize,
    hostile_files_tried: usize,
    hostile_files_passed: usize,
    failures: Vec<String>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        for (target, counts) in other.kills {
            let mine = self.kills.entry(target).or_default();
            mine.iter_mut().zip(counts).for_each(|(a, b)| *a += b);
        }
        self.races_run += other.races_run;
        self.races_passed += other.races_passed;
        self.hostile_specs_tried += other.hostile_specs_tried;
        self.hostile_specs_passed += other.hostile_specs_passed;
        self.hostile_files_tried += other.hostile_files_tried;
        self.hostile_files_passed += other.hostile_files_passed;
        self.failures.extend(other.failures);
    }

    fn kill_total(&self, column: usize) -> usize {
        self.kills.values().map(|c| c[column]).sum()
    }

    fn summary(&self) -> String {
        format!(
            "chaos: kills survived {}/{} ({} landed while the target ran, {} after it ended); races passed {}/{}; \
             hostile specs refused cleanly {}/{}; hostile files handled {}/{}; failures {}",
            self.kill_total(1),
            self.kill_total(0),
            self.kill_total(2),
            self.kill_total(3),
            self.races_passed,
            self.races_run,
            self.hostile_specs_passed,
            self.hostile_specs_tried,
            self.hostile_files_passed,
            self.hostile_files_tried,
            self.failures.len()
        )
    }

    fn json(&self, plan: &Plan, seconds: f64) -> serde_json::Value {
        let kills: serde_json::Map<String, serde_json::Value> = self
            .kills
            .iter()
            .map(|(target, [tried, survived, running, after])| {
                let counts = serde_json::json!({
                    "tried": tried, "survived": survived,
                    "landed_while_running": running, "landed_after_end": after,
                });
                (target.clone(), counts)
            })
            .collect();
        serde_json::json!({
            "seed": plan.seed,
            "kills_per_target": plan.kills_per_target,
            "kills_tried": self.kill_total(0),
            "kills_survived": self.kill_total(1),
            "kills_landed_while_running": self.kill_total(2),
            "kills_landed_after_end": self.kill_total(3),
            "kills": kills,
            "races_run": self.races_run,
            "races_passed": self.races_passed,
            "hostile_specs_tried": self.hostile_specs_tried,
            "hostile_specs_passed": self.hostile_specs_passed,
            "hostile_files_tried": self.hostile_files_tried,
            "hostile_files_passed": self.hostile_files_passed,
            "failures": self.failures,
            "seconds": seconds,
        })
    }
}

#[test]
fn the_pipeline_survives_kills_races_and_hostile_input() {
    let bin_dir = e2e_tests::bin_dir();
    for bin in ["pipeline", "ingest", "features", "head", "finetune"] {
        assert!(bin_dir.join(bin).exists(), "build the workspace's binaries first (cargo build --workspace --bins)");
    }
    let plan = Plan::from_env();
    let started = Instant::now();
    let mut base_dir = tempfile::Builder::new().prefix("tl-chaos-").tempdir().unwrap();
    if std::env::var_os("CHAOS_KEEP").is_some() {
        base_dir.disable_cleanup(true);
        println!("chaos: keeping {}", base_dir.path().display());
    }
    let base = base_dir.path();

    let mut tally = Tally::default();
    std::thread::scope(|scope| {
        let mut parts = Vec::new();
        for (index, target) in TARGETS.iter().enumerate() {
            let seed = plan.seed.wrapping_add(index as u64);
            let (base, bin_dir, kills) = (base, &bin_dir, plan.kills_per_target);
            parts.push((target.name, scope.spawn(move || kill_part(base, bin_dir, target, kills, seed))));
        }
        parts.push(("races", scope.spawn(|| race_part(base, &bin_dir, plan.races))));
        parts.push(("hostile specs", scope.spawn(|| hostile_spec_part(base, &bin_dir))));
        parts.push(("hostile folder", scope.spawn(|| hostile_folder_part(base, &bin_dir))));
        for (name, part) in parts {
            match part.join() {
                Ok(part) => tally.merge(part),
                Err(panic) => tally.failures.push(format!("{name}: the check itself panicked: {}", panic_text(&panic))),
            }
        }
    });

    let summary = tally.summary();
    println!("{summary}");
    if let Some(path) = std::env::var_os("CHAOS_REPORT") {
        let json = tally.json(&plan, started.elapsed().as_secs_f64());
        std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    }
    assert!(tally.failures.is_empty(), "{summary}\n{}", tally.failures.join("\n"));
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(no message)".into())
}

// ---------------------------------------------------------------------------
// Conductor runs in a folder of their own

/// One folder where runs of the tiny experiment happen, with what an
/// uninterrupted run there gave.
struct Slot {
    name: String,
    work: PathBuf,
    logs: PathBuf,
    bin_dir: PathBuf,
    reference: BTreeMap<String, String>,
    /// Stage name → how long its process lived in the uninterrupted run.
    stage_seconds: BTreeMap<String, f64>,
    /// The uninterrupted conductor's wall time.
    wall: Duration,
}

/// A finished conductor run.
struct Finished {
    run_dir: PathBuf,
    /// Its stdout and stderr.
    output: String,
}

impl Slot {
    fn new(base: &Path, bin_dir: &Path, name: &str) -> Result<Slot, String> {
        let work = base.join(name);
        let logs = base.join(format!("{name}-output"));
        for dir in [&work, &logs] {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        for (from, to) in
            [("tests/golden/tiny.toml", "tiny.toml"), ("data-specs/models/tiny-vgg.toml", "tiny-vgg.toml")]
        {
            std::fs::copy(Path::new(ROOT).join(from), work.join(to)).map_err(|e| format!("{from}: {e}"))?;
        }
        let mut slot = Slot {
            name: name.to_owned(),
            work,
            logs,
            bin_dir: bin_dir.to_owned(),
            reference: BTreeMap::new(),
            stage_seconds: BTreeMap::new(),
            wall: Duration::ZERO,
        };
        let started = Instant::now();
        let child = slot.start("reference")?;
        let lifetimes = watch_stages(&child);
        let reference = slot.finish(child, "reference")?;
        slot.wall = started.elapsed();
        slot.reference = digests(&reference.run_dir);
        for target in TARGETS.iter().filter(|t| !t.output.is_empty()) {
            // Its process's lifetime as seen here; the marker's seconds if it came and went unseen.
            let marker = reference.run_dir.join(target.output).join(".stage.json");
            let seconds = lifetimes.get(target.exe).filter(|d| !d.is_zero()).map(Duration::as_secs_f64).or_else(|| {
                std::fs::read(&marker)
                    .ok()
                    .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
                    .and_then(|v| v["seconds"].as_f64())
            });
            let seconds =
                seconds.ok_or_else(|| format!("{}: no seconds in the reference run's marker", marker.display()))?;
            slot.stage_seconds.insert(target.name.to_owned(), seconds);
        }
        if !slot.reference.contains_key("finetune/model.onnx") {
            return Err(format!("{name}: the reference run has no finetune/model.onnx: {:?}", slot.reference.keys()));
        }
        Ok(slot)
    }

    /// Removes the store, the run folders and the feature cache.
    fn wipe(&self) -> Result<(), String> {
        for dir in ["runs", "cache"] {
            match std::fs::remove_dir_all(self.work.join(dir)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(format!("{}: {e}", self.work.join(dir).display()))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Starts the conductor on the tiny experiment, its output in `<tag>.out`/`.err`.
    fn start(&self, tag: &str) -> Result<Child, String> {
        let file = |ext: &str| {
            let path = self.logs.join(format!("{tag}.{ext}"));
            File::create(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        Command::new(self.bin_dir.join("pipeline"))
            .current_dir(&self.work)
            .args(["--experiment", "tiny.toml", "--runs", "runs", "--features-cache", "cache", "--bin-dir"])
            .arg(&self.bin_dir)
            .envs(ONE_THREAD)
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(file("out")?)
            .stderr(file("err")?)
            .spawn()
            .map_err(|e| format!("{}: starting the conductor: {e}", self.name))
    }

    /// Waits for a conductor `start` began; it must succeed.
    fn finish(&self, mut child: Child, tag: &str) -> Result<Finished, String> {
        let ended = process::wait_with_peak(&mut child, RUN_TIMEOUT).map_err(|e| format!("{tag}: waiting: {e}"))?;
        let output = self.output(tag);
        let Some(ended) = ended else {
            return Err(format!("{}/{tag}: the conductor did not finish in {RUN_TIMEOUT:?}; killed", self.name));
        };
        if !ended.status.success() {
            return Err(format!("{}/{tag}: the conductor failed ({}): {}", self.name, ended.status, tail(&output, 6)));
        }
        let run_dir = output
            .lines()
            .find_map(|l| l.strip_prefix("run folder: "))
            .map(|dir| self.work.join(dir.trim()))
            .ok_or_else(|| format!("{}/{tag}: the conductor named no run folder", self.name))?;
        Ok(Finished { run_dir, output })
    }

    fn output(&self, tag: &str) -> String {
        ["out", "err"]
            .iter()
            .map(|ext| std::fs::read(self.logs.join(format!("{tag}.{ext}"))).unwrap_or_default())
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A finished run compared with the reference: every problem found.
    fn check(&self, run: &Finished, tag: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let who = format!("{}/{tag}", self.name);
        match std::panic::catch_unwind(|| digests(&run.run_dir)) {
            Ok(actual) => {
                let differing: BTreeSet<&String> = self
                    .reference
                    .keys()
                    .chain(actual.keys())
                    .filter(|k| self.reference.get(*k) != actual.get(*k))
                    .collect();
                if !differing.is_empty() {
                    problems.push(format!("{who}: outputs differ from the uninterrupted run's: {differing:?}"));
                }
            }
            Err(panic) => problems.push(format!("{who}: an output does not read: {}", panic_text(&panic))),
        }
        // The store, the feature cache and this run's folder; a killed run's
        // own folder is abandoned as it was (no later run reads it).
        let partials: Vec<String> = [self.work.join("runs/.store"), self.work.join("cache"), run.run_dir.clone()]
            .iter()
            .flat_map(|dir| walkdir::WalkDir::new(dir).into_iter().flatten())
            .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
            .map(|e| e.path().strip_prefix(&self.work).unwrap_or(e.path()).display().to_string())
            .collect();
        if !partials.is_empty() {
            problems.push(format!("{who}: partial files left after the rerun: {partials:?}"));
        }
        let mut texts = vec![("output".to_owned(), run.output.clone())];
        for log in std::fs::read_dir(run.run_dir.join("logs")).into_iter().flatten().flatten() {
            if log.path().extension().is_some_and(|e| e == "log") {
                let text = String::from_utf8_lossy(&std::fs::read(log.path()).unwrap_or_default()).into_owned();
                texts.push((format!("logs/{}", log.file_name().to_string_lossy()), text));
            }
        }
        for (place, text) in texts {
            if let Some(line) = error_line(&text) {
                problems.push(format!("{who}: error text in the rerun's {place}: {line}"));
            }
        }
        problems
    }
}

/// Stages run with one thread where they let us choose: the suite runs
/// several conductors at once; outputs do not depend on it.
const ONE_THREAD: [(&str, &str); 2] = [("RAYON_NUM_THREADS", "1"), ("OMP_NUM_THREADS", "1")];

fn error_line(text: &str) -> Option<&str> {
    text.lines().find(|l| {
        let lower = l.to_lowercase();
        lower.contains("error") || lower.contains("panicked")
    })
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

// ---------------------------------------------------------------------------
// Kills

struct Target {
    name: &'static str,
    /// The stage's executable (its /proc comm); empty for the conductor.
    exe: &'static str,
    /// The run folder's sub-folder holding the stage's `.stage.json`.
    output: &'static str,
}

const TARGETS: [Target; 5] = [
    Target { name: "ingest", exe: "ingest", output: "dataset" },
    Target { name: "features", exe: "features", output: "features" },
    Target { name: "head", exe: "head", output: "head" },
    Target { name: "finetune", exe: "finetune", output: "finetune" },
    Target { name: "conductor", exe: "", output: "" },
];

fn kill_part(base: &Path, bin_dir: &Path, target: &Target, kills: usize, seed: u64) -> Tally {
    let mut tally = Tally::default();
    let mut counts = [0; 4];
    let mut slot = match Slot::new(base, bin_dir, &format!("kill-{}", target.name)) {
        Ok(slot) => slot,
        Err(e) => {
            tally.kills.insert(target.name.to_owned(), [kills, 0, 0, 0]);
            tally.failures.push(format!("kill {}: the uninterrupted run failed: {e}", target.name));
            return tally;
        }
    };
    let mut rng = SplitMix64::new(seed);
    for trial in 0..kills {
        counts[0] += 1;
        match kill_trial(&slot, target, rng.next_f64(), trial) {
            Ok((landed_while_running, lived, problems)) => {
                counts[if landed_while_running { 2 } else { 3 }] += 1;
                // It ended before the kill: its lifetime under the load now is the better guess.
                if let Some(lived) = lived {
                    if target.exe.is_empty() {
                        slot.wall = lived;
                    } else {
                        slot.stage_seconds.insert(target.name.to_owned(), lived.as_secs_f64());
                    }
                }
                if problems.is_empty() {
                    counts[1] += 1;
                }
                tally.failures.extend(problems);
            }
            Err(e) => tally.failures.push(e),
        }
    }
    tally.kills.insert(target.name.to_owned(), counts);
    tally
}

/// One kill at `fraction` of the target's usual duration, then the rerun:
/// whether the kill landed while the target ran, how long the target lived
/// if it ended before the kill, and the problems found.
fn kill_trial(
    slot: &Slot,
    target: &Target,
    fraction: f64,
    trial: usize,
) -> Result<(bool, Option<Duration>, Vec<String>), String> {
    slot.wipe()?;
    let tag = format!("kill-{trial}");
    let who = format!("{}/{tag}", slot.name);
    let mut problems = Vec::new();
    let mut conductor = slot.start(&tag)?;
    let conductor_pid = conductor.id();
    let (landed_while_running, lived) = if target.exe.is_empty() {
        let lived = sleep_unless_ended(conductor_pid, slot.wall.mul_f64(fraction));
        let stages = process::descendants(conductor_pid);
        let running = process::running(conductor_pid);
        conductor.kill().map_err(|e| format!("{who}: kill: {e}"))?;
        process::wait_with_peak(&mut conductor, RUN_TIMEOUT).map_err(|e| format!("{who}: waiting: {e}"))?;
        // The stage it was running must not outlive it (and write into the store afterwards).
        let deadline = Instant::now() + ORPHAN_GRACE;
        while stages.iter().any(|&pid| process::running(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for &pid in stages.iter().filter(|&&pid| process::running(pid)) {
            let name = process::comm(pid).unwrap_or_default();
            problems.push(format!("{who}: {name} (pid {pid}) outlived the killed conductor by {ORPHAN_GRACE:?}"));
            let _ = process::kill9(pid);
        }
        (running, lived)
    } else {
        let Some(stage_pid) = wait_for_stage(&conductor, target.exe) else {
            let _ = conductor.kill();
            let _ = process::wait_with_peak(&mut conductor, RUN_TIMEOUT);
            return Err(format!(
                "{who}: the conductor ended before {} started: {}",
                target.exe,
                tail(&slot.output(&tag), 4)
            ));
        };
        let typical = slot.stage_seconds.get(target.name).copied().unwrap_or(0.1);
        let lived = sleep_unless_ended(stage_pid, Duration::from_secs_f64(typical * fraction));
        let running = process::running(stage_pid) && process::comm(stage_pid).as_deref() == Some(target.exe);
        let _ = process::kill9(stage_pid);
        // Its conductor fails (or finishes, if the kill came after the stage ended).
        match process::wait_with_peak(&mut conductor, RUN_TIMEOUT) {
            Ok(Some(_)) => {}
            Ok(None) => problems.push(format!("{who}: the conductor did not end after its stage was killed")),
            Err(e) => return Err(format!("{who}: waiting: {e}")),
        }
        (running, lived)
    };
    let rerun_tag = format!("rerun-{trial}");
    match slot.start(&rerun_tag).and_then(|child| slot.finish(child, &rerun_tag)) {
        Ok(rerun) => problems.extend(slot.check(&rerun, &rerun_tag)),
        Err(e) => problems.push(format!("after killing {} at {:.0}%: {e}", target.name, fraction * 100.0)),
    }
    Ok((landed_while_running, lived, problems))
}

/// Sleeps `delay` unless `pid` ends first; then how long it lived since.
fn sleep_unless_ended(pid: u32, delay: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < delay {
        if !process::running(pid) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_micros(500).min(delay.saturating_sub(start.elapsed())));
    }
    None
}

/// Polls the conductor's children until it ends: each stage executable's
/// lifetime (first to last sighting).
fn watch_stages(conductor: &Child) -> BTreeMap<&'static str, Duration> {
    let mut seen: BTreeMap<&'static str, (Instant, Instant)> = BTreeMap::new();
    let deadline = Instant::now() + RUN_TIMEOUT;
    while process::running(conductor.id()) && Instant::now() < deadline {
        for pid in process::children(conductor.id()) {
            let comm = process::comm(pid);
            if let Some(target) = TARGETS.iter().find(|t| !t.exe.is_empty() && comm.as_deref() == Some(t.exe)) {
                let now = Instant::now();
                seen.entry(target.exe).and_modify(|(_, last)| *last = now).or_insert((now, now));
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    seen.into_iter().map(|(exe, (first, last))| (exe, last - first)).collect()
}

/// Polls the conductor's children until one runs `exe`; `None` if the
/// conductor ends (or hangs) first.
fn wait_for_stage(conductor: &Child, exe: &str) -> Option<u32> {
    let deadline = Instant::now() + RUN_TIMEOUT;
    while Instant::now() < deadline {
        if let Some(pid) =
            process::children(conductor.id()).into_iter().find(|&pid| process::comm(pid).as_deref() == Some(exe))
        {
            return Some(pid);
        }
        if !process::running(conductor.id()) {
            return None;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    None
}

// ---------------------------------------------------------------------------
// Races

fn race_part(base: &Path, bin_dir: &Path, races: usize) -> Tally {
    let mut tally = Tally::default();
    let slot = match Slot::new(base, bin_dir, "races") {
        Ok(slot) => slot,
        Err(e) => {
            tally.races_run = races;
            tally.failures.push(format!("races: the uninterrupted run failed: {e}"));
            return tally;
        }
    };
    for race in 0..races {
        tally.races_run += 1;
        let problems = race_trial(&slot, race);
        if problems.is_empty() {
            tally.races_passed += 1;
        }
        tally.failures.extend(problems);
    }
    tally
}

fn race_trial(slot: &Slot, race: usize) -> Vec<String> {
    if let Err(e) = slot.wipe() {
        return vec![e];
    }
    let tags = [format!("race-{race}-a"), format!("race-{race}-b")];
    let children: Vec<Result<Child, String>> = tags.iter().map(|tag| slot.start(tag)).collect();
    // Both finish before either is checked: one's files in progress are not the other's leftovers.
    let finished: Vec<Result<Finished, String>> =
        children.into_iter().zip(&tags).map(|(child, tag)| child.and_then(|child| slot.finish(child, tag))).collect();
    let mut problems = Vec::new();
    let mut run_dirs = Vec::new();
    for (run, tag) in finished.into_iter().zip(&tags) {
        match run {
            Ok(run) => {
                problems.extend(slot.check(&run, tag));
                run_dirs.push(run.run_dir);
            }
            Err(e) => problems.push(e),
        }
    }
    if run_dirs.len() == 2 && run_dirs[0] == run_dirs[1] {
        problems.push(format!(
            "{}/race-{race}: both conductors used one run folder {}",
            slot.name,
            run_dirs[0].display()
        ));
    }
    problems
}

// ---------------------------------------------------------------------------
// Hostile specs

const EXPERIMENT: &str = r#"name = "hostile"
[data]
demo = { per_class = 4, width = 48, height = 40, seed = 5 }
shorter_side = 36
[model]
spec = "model.toml"
[head]
hidden = [8]
epochs = 1
[finetune]
enabled = false
"#;

const DATASET: &str = r#"name = "hostile-set"
root = "images"
seed = 42
split = { train = 0.8, validation = 0.1, test = 0.1 }
size = { shorter_side = 36 }
"#;

const PYPI_SOURCE: &str = r#"[source.pypi]
requirement = "REQUIREMENT"
wheel = "x-1.0-py3-none-any.whl"
wheel_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
member = "x/model.onnx"
sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
"#;

/// One hostile spec: which file is bad (the error must name it) and the
/// three files as written (`SANDBOX` stands for the sandbox folder).
struct HostileSpec {
    what: &'static str,
    bad_file: &'static str,
    experiment: String,
    model: String,
    dataset: Option<String>,
}

fn hostile_specs() -> Vec<HostileSpec> {
    let model = std::fs::read_to_string(Path::new(ROOT).join("data-specs/models/tiny-vgg.toml")).unwrap_or_default();
    let experiment = |from: &str, to: &str| HostileSpec {
        what: "",
        bad_file: "experiment.toml",
        experiment: EXPERIMENT.replacen(from, to, 1),
        model: model.clone(),
        dataset: None,
    };
    let with_model = |from: &str, to: &str| HostileSpec {
        what: "",
        bad_file: "model.toml",
        experiment: EXPERIMENT.to_owned(),
        model: model.replacen(from, to, 1),
        dataset: None,
    };
    let with_dataset = |from: &str, to: &str| HostileSpec {
        what: "",
        bad_file: "dataset.toml",
        experiment: EXPERIMENT.replacen(
            "demo = { per_class = 4, width = 48, height = 40, seed = 5 }",
            "spec = \"dataset.toml\"",
            1,
        ),
        model: model.clone(),
        dataset: Some(DATASET.replacen(from, to, 1)),
    };
    let generated = "[source.generated]\nmodel = \"tiny-vgg\"\nseed = 7\n";
    let pypi = |requirement: &str| with_model(generated, &PYPI_SOURCE.replace("REQUIREMENT", requirement));
    let named = |what, mut spec: HostileSpec| {
        spec.what = what;
        spec
    };
    vec![
        named("experiment name ../../escaped", experiment("name = \"hostile\"", "name = \"../../escaped\"")),
        named("absolute experiment name", experiment("name = \"hostile\"", "name = \"SANDBOX/outside/run\"")),
        named("model name ../../escaped", with_model("name = \"tiny-vgg\"", "name = \"../../escaped\"")),
        named("absolute model name", with_model("name = \"tiny-vgg\"", "name = \"SANDBOX/outside/model\"")),
        named("dataset name ../../escaped", with_dataset("name = \"hostile-set\"", "name = \"../../escaped\"")),
        named("pip requirement -r URL", pypi("-r http://127.0.0.1:9/requirements.txt")),
        named("pip requirement --index-url", pypi("--index-url http://127.0.0.1:9/simple")),
        named("pip requirement with a space", pypi("onnx==1.0 --pre")),
        named("wrong type: head.epochs a string", experiment("epochs = 1", "epochs = \"many\"")),
        named("wrong type: input.size a string", with_model("size = [32, 32]", "size = \"big\"")),
        named("wrong type: dataset seed a string", with_dataset("seed = 42", "seed = \"x\"")),
        named("unknown key in [head]", experiment("epochs = 1", "epochs = 1\nepochz = 3")),
        named("unknown key in [preprocess]", with_model("color = \"rgb\"", "color = \"rgb\"\nmeen = [0.5, 0.5, 0.5]")),
        named("unknown key in a dataset spec", with_dataset("seed = 42", "seed = 42\nsplitt = 3")),
        named("missing [model]", experiment("[model]\nspec = \"model.toml\"\n", "")),
        named("missing [input]", with_model("[input]\nname = \"data\"\n", "[inputs]\nname = \"data\"\n")),
        named("epochs = 1e300", experiment("epochs = 1", "epochs = 1e300")),
        named("epochs past u64", experiment("epochs = 1", "epochs = 18446744073709551616")),
        named("shorter_side past u32", experiment("shorter_side = 36", "shorter_side = 4294967296")),
        named("demo width past u32", experiment("width = 48", "width = 4294967296")),
        named("dataset size past u32", with_dataset("shorter_side = 36", "shorter_side = 4294967296")),
        named("mean = [nan, ...]", with_model("mean = [0.485, 0.456, 0.406]", "mean = [nan, 0.456, 0.406]")),
        named("std = [inf, ...]", with_model("std = [0.229, 0.224, 0.225]", "std = [inf, 0.224, 0.225]")),
        named("std = [0, ...]", with_model("std = [0.229, 0.224, 0.225]", "std = [0.0, 0.224, 0.225]")),
    ]
}

fn hostile_spec_part(base: &Path, bin_dir: &Path) -> Tally {
    let mut tally = Tally::default();
    let real_cache = runtime::cache_dir().ok();
    for (index, spec) in hostile_specs().into_iter().enumerate() {
        let sandbox = base.join(format!("hostile-spec-{index}"));
        let mut runs: Vec<(&str, Command)> = vec![("pipeline", pipeline_command(bin_dir, &sandbox))];
        if spec.dataset.is_some() {
            let mut ingest = Command::new(bin_dir.join("ingest"));
            ingest.args(["--spec", "dataset.toml", "--out", "runs/dataset"]);
            runs.push(("ingest", ingest));
        }
        for (binary, command) in runs {
            tally.hostile_specs_tried += 1;
            let who = format!("hostile spec '{}' through {binary}", spec.what);
            match hostile_spec_trial(&sandbox, real_cache.as_deref(), &spec, command) {
                Ok(problems) if problems.is_empty() => tally.hostile_specs_passed += 1,
                Ok(problems) => tally.failures.extend(problems.into_iter().map(|p| format!("{who}: {p}"))),
                Err(e) => tally.failures.push(format!("{who}: {e}")),
            }
        }
    }
    tally
}

fn pipeline_command(bin_dir: &Path, sandbox: &Path) -> Command {
    let mut command = Command::new(bin_dir.join("pipeline"));
    command
        .args(["--experiment", "experiment.toml", "--runs", "runs", "--features-cache", "features", "--bin-dir"])
        .arg(bin_dir)
        .env("HOME", sandbox.join("home"));
    command
}

/// Writes the spec's files into a fresh sandbox and runs `command` there
/// with the project cache inside it (the ONNX Runtime library and venv
/// linked from the real cache): the problems found.
fn hostile_spec_trial(
    sandbox: &Path,
    real_cache: Option<&Path>,
    spec: &HostileSpec,
    mut command: Command,
) -> Result<Vec<String>, String> {
    let _ = std::fs::remove_dir_all(sandbox);
    let work = sandbox.join("work");
    let cache = sandbox.join("cache");
    for dir in [&work, &cache, &sandbox.join("home"), &sandbox.join("outside")] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for shared in ["ort", "venv"] {
        if let Some(real) = real_cache.map(|c| c.join(shared)).filter(|p| p.exists()) {
            std::os::unix::fs::symlink(&real, cache.join(shared)).map_err(|e| format!("linking {shared}: {e}"))?;
        }
    }
    let sandbox_text = sandbox.to_string_lossy();
    let mut files = vec![("experiment.toml", &spec.experiment), ("model.toml", &spec.model)];
    if let Some(dataset) = &spec.dataset {
        files.push(("dataset.toml", dataset));
        demo_folder(&work.join("images"))?;
    }
    for (name, text) in files {
        std::fs::write(work.join(name), text.replace("SANDBOX", &sandbox_text)).map_err(|e| format!("{name}: {e}"))?;
    }
    let before = tree(sandbox);

    let output = command
        .current_dir(&work)
        .env("TL_CACHE_DIR", &cache)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(ONE_THREAD)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|child| child.wait_with_output())
        .map_err(|e| format!("running: {e}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let mut problems = Vec::new();
    if output.status.success() {
        problems.push(format!("accepted (exit 0): {}", tail(&String::from_utf8_lossy(&output.stdout), 2)));
    }
    // The file's name in an error line (the conductor's, or a stage's it
    // echoes), and no panic, backtrace or multi-line cause chain.
    let named = stderr.lines().find(|l| l.to_lowercase().contains("error") && l.contains(spec.bad_file));
    let messy = ["panicked", "Caused by", "acktrace"].iter().find(|m| stderr.contains(*m));
    if !output.status.success() && (named.is_none() || messy.is_some()) {
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        problems.push(format!("no clear error line naming {}: {}", spec.bad_file, tail(&lines.join("\n"), 3)));
    }

    // Nothing written outside the runs folder, the feature cache and the sandbox's model cache.
    // ONNX Runtime itself records a device id under $HOME/.cache/Microsoft
    // when it makes a session; no path of ours leads there.
    let onnxruntime_device_id = sandbox.join("home/.cache/Microsoft");
    let allowed = [work.join("runs"), work.join("features"), cache.join("models"), onnxruntime_device_id];
    let changed: Vec<String> = changes(&before, &tree(sandbox))
        .into_iter()
        .filter(|p| !allowed.iter().any(|a| p.starts_with(a)))
        .map(|p| p.display().to_string())
        .collect();
    if !changed.is_empty() {
        problems.push(format!("wrote outside its runs folder and caches: {changed:?}"));
    }
    Ok(problems)
}

/// Every path under `dir` (links not followed) with its size and mtime.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (u64, Option<std::time::SystemTime>)> {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.metadata().ok().map(|m| (e.into_path(), (m.len(), m.modified().ok()))))
        .collect()
}

/// Paths added, changed or removed; a folder only when nothing inside it
/// changed (adding a file changes its folder's mtime).
fn changes<V: PartialEq>(before: &BTreeMap<PathBuf, V>, after: &BTreeMap<PathBuf, V>) -> Vec<PathBuf> {
    let mut changed: Vec<PathBuf> =
        after.iter().filter(|(p, v)| before.get(*p) != Some(*v)).map(|(p, _)| p.clone()).collect();
    changed.extend(before.keys().filter(|p| !after.contains_key(*p)).cloned());
    let all = changed.clone();
    changed.retain(|p| !all.iter().any(|q| q != p && q.starts_with(p)));
    changed.sort();
    changed
}

// ---------------------------------------------------------------------------
// Hostile folder

/// Good images: `classes` folders of five small distinct PNGs each.
fn demo_folder(dir: &Path) -> Result<usize, String> {
    let mut count = 0;
    for (c, class) in ["cats", "dogs"].iter().enumerate() {
        let folder = dir.join(class);
        std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
        for i in 0..5u8 {
            let pixels: Vec<u8> =
                (0..16 * 16 * 3).map(|p| (p as u8).wrapping_mul(7 + i).wrapping_add(c as u8 * 91)).collect();
            let path = folder.join(format!("good-{i}.png"));
            std::fs::write(&path, png_bytes(16, 16, &pixels)).map_err(|e| format!("{}: {e}", path.display()))?;
            count += 1;
        }
    }
    Ok(count)
}

fn png_bytes(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(rgb).unwrap();
    writer.finish().unwrap();
    out
}

/// A hostile entry: its name as ingest prints it, and whether ingesting it
/// (instead of a named reject) is also fine.
struct HostileFile {
    name: &'static str,
    may_be_ingested: bool,
}

fn hostile_folder_part(base: &Path, bin_dir: &Path) -> Tally {
    let mut tally = Tally::default();
    let dir = base.join("hostile-folder");
    let images = dir.join("images");
    let hostile = match hostile_folder(&images) {
        Ok(hostile) => hostile,
        Err(e) => {
            tally.failures.push(format!("hostile folder: making it: {e}"));
            return tally;
        }
    };
    tally.hostile_files_tried = hostile.len();
    ingest_hostile_folder(&dir, bin_dir, &hostile, &mut tally);
    conduct_hostile_folder(&dir, bin_dir, &mut tally);
    tally
}

/// Ingest on the folder: finishes, names each hostile file as a reject
/// with a reason (or ingests it where that is fine), keeps the good ones.
fn ingest_hostile_folder(dir: &Path, bin_dir: &Path, hostile: &[HostileFile], tally: &mut Tally) {
    let (stdout, stderr) = (dir.join("ingest.out"), dir.join("ingest.err"));
    let (Ok(out), Ok(err)) = (File::create(&stdout), File::create(&stderr)) else {
        tally.failures.push(format!("hostile folder: cannot write {}", stdout.display()));
        return;
    };
    let child = Command::new(bin_dir.join("ingest"))
        .current_dir(dir)
        .args(["--root", "images", "--out", "dataset", "--shorter-side", "36", "--threads", "1"])
        .envs(ONE_THREAD)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn();
    let finished = child.and_then(|mut child| process::wait_with_peak(&mut child, INGEST_TIMEOUT));
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    let (stdout, stderr) = (read(&stdout), read(&stderr));
    let finished = match finished {
        Ok(Some(finished)) => finished,
        Ok(None) => {
            tally.failures.push(format!("hostile folder: ingest did not finish in {INGEST_TIMEOUT:?}; killed"));
            return;
        }
        Err(e) => {
            tally.failures.push(format!("hostile folder: running ingest: {e}"));
            return;
        }
    };
    // Ingest's own VmHWM; wait4's figure (an upper bound that starts from
    // this test process's size) where it printed none.
    let peak_bytes = progress::parse_peak(&stderr).map_or(finished.max_rss_bytes, |kib| kib << 10);
    println!(
        "chaos: ingest on the hostile folder: {} in {:.1} s, peak {} MiB",
        finished.status,
        finished.wall.as_secs_f64(),
        peak_bytes >> 20
    );
    if !finished.status.success() {
        tally.failures.push(format!("hostile folder: ingest failed ({}): {}", finished.status, tail(&stderr, 4)));
        return;
    }
    if peak_bytes > INGEST_PEAK_LIMIT {
        tally.failures.push(format!(
            "hostile folder: ingest peaked at {} MiB, over {} MiB",
            peak_bytes >> 20,
            INGEST_PEAK_LIMIT >> 20
        ));
    }
    // A reject line: `<Kind>  <class>/<name>: <reason>`.
    let reject_of = |name: &str| {
        stderr
            .lines()
            .find(|l| l.split_once(": ").is_some_and(|(head, reason)| head.contains(name) && !reason.trim().is_empty()))
    };
    let ingested = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ingested "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<usize>().ok());
    let mut expected = 10;
    for file in hostile {
        match reject_of(file.name) {
            Some(_) => tally.hostile_files_passed += 1,
            None if file.may_be_ingested => {
                expected += 1;
                tally.hostile_files_passed += 1;
            }
            None => {
                tally.failures.push(format!("hostile folder: {} is not reported as a reject with a reason", file.name))
            }
        }
    }
    if ingested != Some(expected) {
        tally.failures.push(format!(
            "hostile folder: ingested {ingested:?} images, expected {expected} (the 10 good ones and the hostile ones not rejected)"
        ));
    }
}

/// The conductor on the folder (its own folder digest lists it too): the
/// run completes, the hostile files rejected, not fatal.
fn conduct_hostile_folder(dir: &Path, bin_dir: &Path, tally: &mut Tally) {
    tally.hostile_files_tried += 1;
    let model = std::fs::read(Path::new(ROOT).join("data-specs/models/tiny-vgg.toml")).unwrap_or_default();
    let written = std::fs::write(dir.join("experiment.toml"), EXPERIMENT)
        .and_then(|()| std::fs::write(dir.join("model.toml"), model));
    let (out, err) = (dir.join("pipeline.out"), dir.join("pipeline.err"));
    let started = written.and_then(|()| {
        // The user's own cache (ONNX Runtime, the generated model), unlike the hostile specs' sandbox.
        let mut command = Command::new(bin_dir.join("pipeline"));
        command
            .args(["--experiment", "experiment.toml", "--data", "images", "--runs", "runs", "--features-cache"])
            .args(["features", "--bin-dir"])
            .arg(bin_dir)
            .current_dir(dir)
            .envs(ONE_THREAD)
            .stdin(Stdio::null());
        command.stdout(File::create(&out)?).stderr(File::create(&err)?).spawn()
    });
    let finished = started.and_then(|mut child| process::wait_with_peak(&mut child, RUN_TIMEOUT));
    let output = String::from_utf8_lossy(&std::fs::read(&err).unwrap_or_default()).into_owned();
    match finished {
        Ok(Some(f)) if f.status.success() => tally.hostile_files_passed += 1,
        Ok(Some(f)) => {
            tally.failures.push(format!("hostile folder through the conductor: {}: {}", f.status, tail(&output, 3)))
        }
        Ok(None) => tally
            .failures
            .push(format!("hostile folder through the conductor: not finished in {RUN_TIMEOUT:?}; killed")),
        Err(e) => tally.failures.push(format!("hostile folder through the conductor: {e}")),
    }
}

/// The good images plus every hostile entry, all in `cats/`.
fn hostile_folder(images: &Path) -> Result<Vec<HostileFile>, String> {
    demo_folder(images)?;
    let cats = images.join("cats");
    let io = |what: &str, r: std::io::Result<()>| r.map_err(|e| format!("{what}: {e}"));
    let fifo = Command::new("mkfifo").arg(cats.join("a.png")).status().map_err(|e| format!("mkfifo: {e}"))?;
    if !fifo.success() {
        return Err("mkfifo failed".into());
    }
    io("link to /dev/zero", std::os::unix::fs::symlink("/dev/zero", cats.join("z.png")))?;
    io("link loop", std::os::unix::fs::symlink("loop.png", cats.join("loop.png")))?;
    io("dangling link", std::os::unix::fs::symlink("missing.png", cats.join("dangling.png")))?;
    let wide: Vec<u8> = (0..100_000u32 * 3).map(|i| (i % 251) as u8).collect();
    io("100000x1 PNG", std::fs::write(cats.join("wide.png"), png_bytes(100_000, 1, &wide)))?;
    io("PNG declaring 10^9 pixels", std::fs::write(cats.join("billion.png"), demo::png_bomb(40_000, 25_000)))?;
    let mut hostile = vec![
        HostileFile { name: "cats/a.png", may_be_ingested: false },
        HostileFile { name: "cats/z.png", may_be_ingested: false },
        HostileFile { name: "cats/loop.png", may_be_ingested: false },
        HostileFile { name: "cats/dangling.png", may_be_ingested: false },
        // Stored at most at its own size: a clear reject or a small row of pixels.
        HostileFile { name: "cats/wide.png", may_be_ingested: true },
        HostileFile { name: "cats/billion.png", may_be_ingested: false },
    ];
    let non_utf8 = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(b"bad-\xff.png");
    let pixels: Vec<u8> = (0..16 * 16 * 3).map(|p| (p % 13) as u8 * 19).collect();
    io("non-UTF-8 name", std::fs::write(cats.join(non_utf8), png_bytes(16, 16, &pixels)))?;
    // A clear reject or a lossless path; however the name is printed, it starts so.
    hostile.push(HostileFile { name: "cats/bad-", may_be_ingested: true });
    Ok(hostile)
}
