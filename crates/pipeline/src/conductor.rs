//! One run: its folder and record, and each stage run or skipped, linked
//! into the run folder and recorded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use atomic_file::Lock;
use contracts::run::{RunRecord, StageMarker, StageRecord, StageStatus, RUN_FILE};
use serde::Serialize;

use crate::process::{self, Failure};
use crate::stage::{Stage, StageArgs};
use crate::{report_input, store, Options, StageFailed};

/// A stage's output in the store, and the fingerprint it was made under
/// (which later stages' fingerprints include).
pub(crate) struct Product {
    pub dir: PathBuf,
    pub fingerprint: String,
}

pub(crate) struct Conductor<'a> {
    options: &'a Options,
    force: Vec<Stage>,
    store: PathBuf,
    run_dir: PathBuf,
    record: RunRecord,
    /// Shared locks on the store entries this run uses, held to its end.
    held: Vec<Lock>,
}

/// How a stage that did not fail ended.
struct Done {
    status: StageStatus,
    note: String,
}

impl<'a> Conductor<'a> {
    /// Makes the run folder (`experiment.toml`, `logs/`) and its record.
    pub fn open(options: &'a Options, force: Vec<Stage>, model: &models::ModelChoice) -> Result<Conductor<'a>> {
        let experiment = &options.experiment;
        let started_at = chrono::Utc::now();
        let run_dir = new_run_dir(&options.runs_root, &experiment.name, &started_at)?;
        std::fs::create_dir_all(run_dir.join("logs"))?;
        atomic_file::write(&run_dir.join("experiment.toml"), experiment.to_toml().as_bytes())?;
        eprintln!("run folder: {}", run_dir.display());
        let record = RunRecord {
            name: experiment.name.clone(),
            started_at: started_at.to_rfc3339(),
            model_spec: model.spec.clone(),
            model_note: model.note.clone(),
            stages: Vec::new(),
            seconds: 0.0,
            report: None,
        };
        Ok(Conductor { options, force, store: options.runs_root.join(".store"), run_dir, record, held: Vec::new() })
    }

    pub fn store(&self) -> &Path {
        &self.store
    }

    pub fn features_cache(&self) -> Option<&'a Path> {
        self.options.features_cache.as_deref()
    }

    /// Writes a stage's settings table to `logs/<stage>.toml`, for its
    /// `--config`; returns the file.
    pub fn write_settings<T: Serialize>(&self, stage: Stage, settings: &T) -> Result<PathBuf> {
        let path = self.run_dir.join("logs").join(stage.settings_file());
        let text = toml::to_string_pretty(settings).with_context(|| format!("{stage} settings as TOML"))?;
        atomic_file::write(&path, text.as_bytes())?;
        Ok(path)
    }

    /// The run folder, its record, and the locks to hold until the run ends.
    pub fn into_parts(self) -> (PathBuf, RunRecord, Vec<Lock>) {
        (self.run_dir, self.record, self.held)
    }

    /// Runs (or skips) one stage; returns its output folder in the store,
    /// which later stages read (stable, unlike a run folder a user may
    /// delete). The entry is checked and produced under its exclusive lock,
    /// then held under a shared lock until the run ends. Locks are taken in
    /// stage order and an exclusive one is held only while producing, so
    /// two conductors cannot wait on each other in a cycle.
    pub fn stage(&mut self, stage: Stage, fingerprint: String, args: impl Fn(&Path) -> StageArgs) -> Result<Product> {
        let entry = store::Entry::new(&self.store, stage, &fingerprint);
        let log = self.run_dir.join("logs").join(stage.log_file());
        let started = Instant::now();
        let mut force = self.force.contains(&stage);
        let mut attempts = 0;
        let done = loop {
            let done = {
                let _exclusive = entry.lock_exclusive()?;
                self.check_or_produce(stage, &fingerprint, &entry, &log, force, &args)?
            };
            // flock cannot turn an exclusive lock into a shared one
            // atomically: another run's --force or gc may remove the entry
            // in between, so it is checked again under the shared lock.
            let shared = entry.lock_shared()?;
            if store::complete(&entry.dir, &fingerprint).is_some() {
                self.held.push(shared);
                break done;
            }
            attempts += 1;
            if attempts == 5 {
                bail!("the store entry {} keeps being removed by other processes", entry.dir.display());
            }
            eprintln!("[{stage}] {} was removed by another process; checking again", entry.dir.display());
            force = false;
        };
        let out = entry.dir;
        store::link_tree(&out, &self.run_dir.join(stage.output_dir()))?;
        let what = report_input::stage_note(&self.run_dir, stage)
            .with_context(|| format!("the {stage} stage's output in {}", out.display()))?;
        let note = if done.note.is_empty() { what } else { format!("{what}; {}", done.note) };
        self.push(stage, done.status, started, &fingerprint, &out, &log, note)?;
        Ok(Product { dir: out, fingerprint })
    }

    /// Under the entry's exclusive lock: skips the stage if its entry is
    /// complete and verifies, else runs it into a staging folder and
    /// publishes that.
    fn check_or_produce(
        &mut self,
        stage: Stage,
        fingerprint: &str,
        entry: &store::Entry,
        log: &Path,
        force: bool,
        args: &impl Fn(&Path) -> StageArgs,
    ) -> Result<Done> {
        let mut note = String::new();
        if let Some(marker) = store::complete(&entry.dir, fingerprint).filter(|_| !force) {
            match verify(stage, &entry.dir, &marker) {
                Ok(()) => {
                    entry.remove_leftovers()?;
                    return skip(stage, &marker, &entry.dir, log);
                }
                Err(reason) => {
                    eprintln!("[{stage}] output of {stage} no longer verifies: {reason}; running it again");
                    note = format!("ran again: the stored output no longer verified ({reason})");
                }
            }
        }
        let (staging, resumed) = entry.prepare_staging(stage.resumes())?;
        if resumed {
            eprintln!("[{stage}] continuing in {} (left by an earlier run)", staging.display());
        }
        let done = self.execute(stage, fingerprint, entry, &staging, log, args)?;
        entry.publish(&staging)?;
        // What the stage left beside its staging folder (ingest's lock file).
        entry.remove_leftovers()?;
        Ok(Done {
            note: [done.note, note].into_iter().filter(|n| !n.is_empty()).collect::<Vec<_>>().join("; "),
            ..done
        })
    }

    /// Runs the stage's binary into `staging` and writes the marker there;
    /// a failure is recorded and returned as [`StageFailed`] (the staging
    /// folder stays, for the next run to resume or remove).
    fn execute(
        &mut self,
        stage: Stage,
        fingerprint: &str,
        entry: &store::Entry,
        staging: &Path,
        log: &Path,
        args: &impl Fn(&Path) -> StageArgs,
    ) -> Result<Done> {
        let started = Instant::now();
        eprintln!("[{stage}] running");
        let program = self.options.bin_dir.join(stage.binary());
        let result = process::run_logged(&program, args(staging).as_slice(), log, stage, self.options.echo);
        let failure = match result {
            Ok(()) if staging.join(stage.product()).exists() => None,
            Ok(()) => Some(Failure::NoProduct(stage.product())),
            Err(failure) => Some(failure),
        };
        if let Some(reason) = failure {
            self.push(stage, StageStatus::Failed, started, fingerprint, &entry.dir, log, reason.describe())?;
            let tail = process::tail(log, 15);
            let run_dir = self.run_dir.clone();
            return Err(
                StageFailed { stage: stage.name().to_owned(), reason, tail, log: log.to_owned(), run_dir }.into()
            );
        }
        relocate(stage, staging, &entry.dir)?;
        let seconds = started.elapsed().as_secs_f64();
        let marker = StageMarker {
            stage: stage.name().to_owned(),
            fingerprint: fingerprint.to_owned(),
            seconds,
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            outputs: store::list_outputs(staging)?,
        };
        store::mark_complete(staging, &marker)?;
        eprintln!("[{stage}] done in {seconds:.1} s");
        Ok(Done { status: StageStatus::Ran, note: String::new() })
    }

    /// Adds the stage to the record and rewrites `run.json`.
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        stage: Stage,
        status: StageStatus,
        started: Instant,
        fingerprint: &str,
        out: &Path,
        log: &Path,
        note: String,
    ) -> Result<()> {
        self.record.stages.push(StageRecord {
            name: stage.name().to_owned(),
            status,
            seconds: started.elapsed().as_secs_f64(),
            fingerprint: fingerprint.to_owned(),
            output: out.to_owned(),
            log: log.to_owned(),
            note,
        });
        write_run(&self.run_dir, &self.record)
    }
}

/// Whether a complete entry still holds what its marker lists.
fn verify(stage: Stage, dir: &Path, marker: &StageMarker) -> Result<(), String> {
    store::verify(dir, marker)?;
    if stage == Stage::Features {
        // Every vector features.json relies on, in a readable cache segment.
        feature_cache::verify(dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The paths a stage records that point into its own output folder name
/// the staging folder it ran in; after publication they must name the
/// entry. Only the fine-tune stage does this (`finetune.json`: `artifacts`,
/// `model_onnx`).
fn relocate(stage: Stage, staging: &Path, entry: &Path) -> Result<()> {
    if stage != Stage::Finetune {
        return Ok(());
    }
    let path = staging.join(contracts::finetune::SUMMARY_FILE);
    let mut summary: contracts::finetune::FinetuneSummary = contracts::read(&path)?;
    let moved = |p: &Path| p.strip_prefix(staging).ok().map(|rest| entry.join(rest));
    let (artifacts, model) = (moved(&summary.artifacts), moved(&summary.model_onnx));
    if artifacts.is_none() && model.is_none() {
        return Ok(());
    }
    summary.artifacts = artifacts.unwrap_or(summary.artifacts);
    summary.model_onnx = model.unwrap_or(summary.model_onnx);
    Ok(contracts::write(&path, &summary)?)
}

/// A stage whose output is complete for its fingerprint: says so in its log.
fn skip(stage: Stage, marker: &StageMarker, out: &Path, log: &Path) -> Result<Done> {
    let note = format!(
        "up to date (fingerprint {}, made {} in {:.1} s)",
        &marker.fingerprint[..16],
        marker.finished_at,
        marker.seconds
    );
    std::fs::write(log, format!("skipped: {note}\noutput: {}\n", out.display()))
        .with_context(|| format!("writing {}", log.display()))?;
    eprintln!("[{stage}] skipped: {note}");
    Ok(Done { status: StageStatus::Skipped, note })
}

pub(crate) fn write_run(run_dir: &Path, record: &RunRecord) -> Result<()> {
    Ok(contracts::write(&run_dir.join(RUN_FILE), record)?)
}

/// `runs/<name>-<YYYYmmdd-HHMMSS>`, with `-2`, `-3`... if taken.
fn new_run_dir(root: &Path, name: &str, at: &chrono::DateTime<chrono::Utc>) -> Result<PathBuf> {
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let base = format!("{name}-{}", at.format("%Y%m%d-%H%M%S"));
    for n in 1.. {
        let dir = root.join(if n == 1 { base.clone() } else { format!("{base}-{n}") });
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", dir.display())),
        }
    }
    unreachable!()
}
