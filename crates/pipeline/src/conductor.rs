//! One run: its folder and record, and each stage run or skipped, linked
//! into the run folder and recorded.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
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
        Ok(Conductor { options, force, store: options.runs_root.join(".store"), run_dir, record })
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

    pub fn into_parts(self) -> (PathBuf, RunRecord) {
        (self.run_dir, self.record)
    }

    /// Runs (or skips) one stage; returns its output folder in the store,
    /// which later stages read (stable, unlike a run folder a user may
    /// delete).
    pub fn stage(
        &mut self,
        stage: Stage,
        fingerprint: String,
        args: impl FnOnce(&Path) -> StageArgs,
    ) -> Result<Product> {
        let out = store::stage_dir(&self.store, stage, &fingerprint);
        let log = self.run_dir.join("logs").join(stage.log_file());
        let started = Instant::now();
        let up_to_date = store::complete(&out, &fingerprint).filter(|_| !self.force.contains(&stage));
        let done = match up_to_date {
            Some(marker) => skip(stage, &marker, &out, &log)?,
            None => self.execute(stage, &fingerprint, &out, &log, args)?,
        };
        store::link_tree(&out, &self.run_dir.join(stage.output_dir()))?;
        let what = report_input::stage_note(&self.run_dir, stage)
            .with_context(|| format!("the {stage} stage's output in {}", out.display()))?;
        let note = if done.note.is_empty() { what } else { format!("{what}; {}", done.note) };
        self.push(stage, done.status, started, &fingerprint, &out, &log, note)?;
        Ok(Product { dir: out, fingerprint })
    }

    /// Runs the stage's binary into a fresh `out`; a failure is recorded
    /// and returned as [`StageFailed`].
    fn execute(
        &mut self,
        stage: Stage,
        fingerprint: &str,
        out: &Path,
        log: &Path,
        args: impl FnOnce(&Path) -> StageArgs,
    ) -> Result<Done> {
        let started = Instant::now();
        if out.exists() && self.force.contains(&stage) {
            std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
        }
        std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
        eprintln!("[{stage}] running");
        let program = self.options.bin_dir.join(stage.binary());
        let result = process::run_logged(&program, args(out).as_slice(), log, stage, self.options.echo);
        let failure = match result {
            Ok(()) if out.join(stage.product()).exists() => None,
            Ok(()) => Some(Failure::NoProduct(stage.product())),
            Err(failure) => Some(failure),
        };
        if let Some(reason) = failure {
            self.push(stage, StageStatus::Failed, started, fingerprint, out, log, reason.describe())?;
            let tail = process::tail(log, 15);
            let run_dir = self.run_dir.clone();
            return Err(
                StageFailed { stage: stage.name().to_owned(), reason, tail, log: log.to_owned(), run_dir }.into()
            );
        }
        let seconds = started.elapsed().as_secs_f64();
        let marker = StageMarker {
            stage: stage.name().to_owned(),
            fingerprint: fingerprint.to_owned(),
            seconds,
            finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        };
        store::mark_complete(out, &marker)?;
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
