//! The training loop, in Rust: epochs of seeded batches, the learning rate
//! set per step, validation each epoch in eval mode, early stopping, the
//! best checkpoint kept, metrics as JSON lines, and a checkpoint (with the
//! optimizer state) after every epoch so an interrupted run resumes from the
//! last completed epoch and ends with the weights an uninterrupted run would
//! have.
//!
//! Run folder:
//! - `state.json`: progress (written atomically after each epoch; the truth
//!   on resume);
//! - `checkpoints/epoch-NNNN.ckpt`: the latest epoch, with optimizer state;
//! - `checkpoints/best-epoch-NNNN.ckpt`: the best epoch so far, weights only;
//! - `metrics.jsonl`: one [`EpochRecord`] per line.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use progress::Progress;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::data::{BatchSource, Batches, EpochOrder};
use crate::error::{DataError, FinetuneError, Result, RunError};
use crate::ort_training::{OrtTraining, SessionConfig, TrainingSession};
pub use contracts::finetune::{StopReason, TrainConfig};
use contracts::{ContractError, JsonLines};
use train_kit::early_stopping::Tracker;
pub use train_kit::EpochRecord;

pub const STATE_FILE: &str = "state.json";
pub const METRICS_FILE: &str = "metrics.jsonl";
pub const CHECKPOINT_DIR: &str = "checkpoints";
const STATE_FORMAT: u32 = 1;

/// The best epoch so far.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub epoch: usize,
    pub monitor: f64,
    /// File name in `checkpoints/`.
    pub checkpoint: String,
}

/// `state.json` (read and written through [`contracts`], which add its
/// `schema_version`; `format_version` is older and kept as it was).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    pub format_version: u32,
    /// Of the artifacts, the settings and the data sizes.
    pub run_fingerprint: String,
    pub artifacts_fingerprint: String,
    pub config: TrainConfig,
    pub completed_epochs: usize,
    pub global_step: usize,
    /// File name in `checkpoints/` of the last completed epoch.
    pub latest_checkpoint: Option<String>,
    pub best: Option<Best>,
    pub epochs_since_best: usize,
    /// Set once the run is over (completed or early-stopped).
    pub finished: Option<StopReason>,
    pub history: Vec<EpochRecord>,
}

impl contracts::Contract for RunState {
    const NAME: &'static str = "fine-tuning run state";
    const SCHEMA_VERSION: u32 = 1;
}

/// What [`train`] returns.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainOutcome {
    pub state: RunState,
    pub stop: StopReason,
    /// The epoch this call started after (0 for a fresh run).
    pub resumed_after_epoch: usize,
    /// The best epoch's checkpoint (weights only); what to export.
    pub best_checkpoint: PathBuf,
    /// The last epoch's checkpoint (with optimizer state).
    pub latest_checkpoint: PathBuf,
}

/// Where and how to train.
#[derive(Clone, Copy)]
pub struct RunOptions<'a> {
    pub artifacts: &'a Artifacts,
    pub run_dir: &'a Path,
    pub config: &'a TrainConfig,
    pub session: SessionConfig,
    /// Told each epoch's steps (a bar per epoch).
    pub progress: &'a dyn Progress,
}

/// Trains, or resumes the run in `run_dir` (see the module doc). Calls
/// `on_epoch` after each epoch's checkpoint and state are on disk; returning
/// `ControlFlow::Break` stops there as if interrupted (a later call
/// resumes). A NaN or infinite training loss stops the run with
/// [`FinetuneError::NonFiniteLoss`] before that step's update; the run
/// folder keeps the last completed epoch.
pub fn train(
    ort: &OrtTraining,
    run: &RunOptions<'_>,
    train: &mut dyn BatchSource,
    mut validation: Option<&mut dyn BatchSource>,
    on_epoch: &mut dyn FnMut(&EpochRecord) -> ControlFlow<()>,
) -> Result<TrainOutcome> {
    check_inputs(run.config, train, validation.as_deref())?;
    let _lock = atomic_file::Lock::exclusive_folder(run.run_dir, "the fine-tuning run folder")?;
    // Temporaries a killed process left beside state.json and metrics.jsonl
    // (those in checkpoints/ go in RunFolder::open).
    atomic_file::remove_stale_partials(run.run_dir, true);
    let mut folder = RunFolder::open(run, train.len(), validation.as_ref().map(|v| v.len()))?;
    if let Some(stop) = folder.state.finished.clone() {
        return folder.outcome(stop);
    }
    let mut session = folder.session(ort)?;
    for epoch in folder.state.completed_epochs + 1..=run.config.epochs {
        let started = Instant::now();
        let trained = folder.train_epoch(&mut session, train, epoch)?;
        let (val_loss, val_accuracy) = match validation.as_deref_mut() {
            Some(source) => {
                let totals = evaluate(&mut session, source, run.config.batch_size, epoch)?;
                (Some(totals.loss()), Some(totals.accuracy()))
            }
            None => (None, None),
        };
        let monitor = val_loss.unwrap_or_else(|| trained.totals.loss());
        let kept = folder.keep_checkpoints(&session, epoch, monitor)?;
        let record = EpochRecord {
            epoch,
            epochs: run.config.epochs,
            steps: folder.steps_per_epoch,
            global_step: folder.state.global_step,
            learning_rate: trained.learning_rate,
            train_loss: trained.totals.loss(),
            train_accuracy: trained.totals.accuracy(),
            val_loss,
            val_accuracy,
            monitor,
            best: kept.improved,
            seconds: started.elapsed().as_secs_f64(),
            train_examples_per_second: train.len() as f64 / trained.seconds.max(1e-9),
            input_seconds: trained.input_seconds,
        };
        folder.finish_epoch(&record, &kept.stale)?;
        let flow = on_epoch(&record);
        if let Some(stop) = folder.state.finished.clone() {
            return folder.outcome(stop);
        }
        if flow.is_break() {
            return folder.outcome(StopReason::Interrupted);
        }
    }
    // The last epoch sets `finished`, so only a state.json that says every
    // epoch ran but the run did not end gets here.
    Err(folder.state_error("records every epoch as done, yet the run as unfinished"))
}

/// The settings are valid and the sources hold examples.
fn check_inputs(config: &TrainConfig, train: &dyn BatchSource, validation: Option<&dyn BatchSource>) -> Result<()> {
    config.validate().map_err(FinetuneError::settings("training settings"))?;
    if train.is_empty() {
        return Err(DataError::EmptyTraining.into());
    }
    if validation.is_some_and(|v| v.is_empty()) {
        return Err(DataError::EmptyValidation.into());
    }
    Ok(())
}

/// A run folder and its state, as one call of [`train`] advances them.
struct RunFolder<'r, 'a> {
    run: &'r RunOptions<'a>,
    checkpoints: PathBuf,
    state: RunState,
    resumed_after_epoch: usize,
    steps_per_epoch: usize,
}

/// One epoch's training steps.
struct EpochTraining {
    totals: Totals,
    /// The rate of the epoch's last step.
    learning_rate: f64,
    /// Spent getting batches from the source.
    input_seconds: f64,
    seconds: f64,
}

/// What [`RunFolder::keep_checkpoints`] did.
struct Kept {
    /// The epoch is the best so far.
    improved: bool,
    /// Checkpoints the state no longer names, removed once it is written.
    stale: Vec<String>,
}

impl<'r, 'a> RunFolder<'r, 'a> {
    /// The run in `run.run_dir`: resumed from its `state.json` when that
    /// describes the same run, else a fresh one (refused when the folder
    /// holds another run). `metrics.jsonl` is rewritten from the state.
    fn open(run: &'r RunOptions<'a>, train_len: usize, validation_len: Option<usize>) -> Result<Self> {
        let config = run.config;
        let run_fingerprint = spec::fingerprint(
            "finetune-run",
            &(&run.artifacts.manifest.fingerprint, config, train_len, validation_len),
        )
        .0;
        let checkpoints = run.run_dir.join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&checkpoints).map_err(FinetuneError::io("cannot create", &checkpoints))?;
        let state = match read_state(run.run_dir)? {
            Some(state) if state.run_fingerprint == run_fingerprint => state,
            Some(state) => {
                return Err(RunError::OtherRun {
                    path: run.run_dir.to_owned(),
                    found: state.run_fingerprint,
                    expected: run_fingerprint,
                }
                .into())
            }
            None => RunState {
                format_version: STATE_FORMAT,
                run_fingerprint,
                artifacts_fingerprint: run.artifacts.manifest.fingerprint.clone(),
                config: config.clone(),
                completed_epochs: 0,
                global_step: 0,
                latest_checkpoint: None,
                best: None,
                epochs_since_best: 0,
                finished: None,
                history: Vec::new(),
            },
        };
        let folder = RunFolder {
            run,
            checkpoints,
            resumed_after_epoch: state.completed_epochs,
            steps_per_epoch: train_len.div_ceil(config.batch_size),
            state,
        };
        folder.check_resumable()?;
        folder.remove_unnamed_checkpoints();
        rewrite_metrics(run.run_dir, &folder.state.history)?;
        Ok(folder)
    }

    /// Removes what a killed process left in `checkpoints/`: temporaries,
    /// and checkpoints `state.json` does not name (saved before the state
    /// that would have named them, or stale ones not yet removed after it),
    /// so a resumed run ends with the files of an uninterrupted one. The
    /// caller holds the run folder's lock.
    fn remove_unnamed_checkpoints(&self) {
        atomic_file::remove_stale_partials(&self.checkpoints, true);
        let named: Vec<&str> = self
            .state
            .latest_checkpoint
            .iter()
            .map(String::as_str)
            .chain(self.state.best.as_ref().map(|b| b.checkpoint.as_str()))
            .collect();
        let Ok(entries) = std::fs::read_dir(&self.checkpoints) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name.ends_with(".ckpt") && (name.starts_with("epoch-") || name.starts_with("best-epoch-"));
            if ours && !named.contains(&name.as_str()) && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// A resumed state names the checkpoints of its completed epochs, and they exist.
    fn check_resumable(&self) -> Result<()> {
        let state = &self.state;
        let started = state.completed_epochs > 0;
        if state.latest_checkpoint.is_some() != started || state.best.is_some() != started {
            return Err(self.state_error("the completed epochs, latest checkpoint and best epoch disagree"));
        }
        if state.finished.is_none() && state.completed_epochs >= self.run.config.epochs {
            return Err(self.state_error("records every epoch as done, yet the run as unfinished"));
        }
        for name in state.latest_checkpoint.iter().chain(state.best.as_ref().map(|b| &b.checkpoint)) {
            self.checkpoint(name)?;
        }
        Ok(())
    }

    /// The path of a checkpoint that `state.json` names, which must be a
    /// file in `checkpoints/`.
    fn checkpoint(&self, name: &str) -> Result<PathBuf> {
        let path = self.checkpoints.join(name);
        if Path::new(name).file_name() != Some(name.as_ref()) || !path.is_file() {
            return Err(RunError::MissingCheckpoint { path: self.state_path(), checkpoint: name.to_owned() }.into());
        }
        Ok(path)
    }

    fn state_path(&self) -> PathBuf {
        self.run.run_dir.join(STATE_FILE)
    }

    fn state_error(&self, problem: &'static str) -> FinetuneError {
        RunError::State { path: self.state_path(), problem }.into()
    }

    fn outcome(&self, stop: StopReason) -> Result<TrainOutcome> {
        let state = &self.state;
        let (Some(best), Some(latest)) = (&state.best, &state.latest_checkpoint) else {
            return Err(RunError::NoEpoch { path: self.run.run_dir.to_owned() }.into());
        };
        Ok(TrainOutcome {
            state: state.clone(),
            stop,
            resumed_after_epoch: self.resumed_after_epoch,
            best_checkpoint: self.checkpoint(&best.checkpoint)?,
            latest_checkpoint: self.checkpoint(latest)?,
        })
    }

    /// A training session at the last completed epoch (or the artifacts'
    /// initial weights), optimizer state included.
    fn session(&self, ort: &OrtTraining) -> Result<TrainingSession> {
        let start = match &self.state.latest_checkpoint {
            Some(name) => self.checkpoint(name)?,
            None => self.run.artifacts.checkpoint(),
        };
        ort.open(&self.run.artifacts.files(), &start, self.run.session, true)
    }

    /// One epoch of training steps in the epoch's seeded order, the rate
    /// set per step by the schedule.
    fn train_epoch(
        &mut self,
        session: &mut TrainingSession,
        train: &mut dyn BatchSource,
        epoch: usize,
    ) -> Result<EpochTraining> {
        let (config, progress) = (self.run.config, self.run.progress);
        let started = Instant::now();
        let total_steps = self.steps_per_epoch * config.epochs;
        let len = train.len();
        let mut totals = Totals::default();
        let mut learning_rate = config.learning_rate;
        let mut input_seconds = 0.0;
        progress.start(&format!("epoch {epoch}/{}", config.epochs), self.steps_per_epoch as u64);
        let order = EpochOrder { seed: config.seed, epoch, shuffle: config.shuffle };
        let mut batches = train.batches(order, config.batch_size);
        for step in 0..self.steps_per_epoch {
            learning_rate = config.schedule.lr(
                config.learning_rate,
                self.state.global_step as u64,
                self.steps_per_epoch as u64,
                total_steps as u64,
            );
            session.set_learning_rate(learning_rate)?;
            let fetch = Instant::now();
            let expected = config.batch_size.min(len - step * config.batch_size);
            let batch = next_batch(&mut batches, expected)?;
            input_seconds += fetch.elapsed().as_secs_f64();
            check_batch(&batch, expected)?;
            let labels = batch.labels.clone();
            let output = session.train_step(batch.inputs, batch.labels)?;
            if !output.loss.is_finite() {
                return Err(FinetuneError::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    global_step: self.state.global_step + 1,
                    loss: output.loss,
                });
            }
            check_labels(&labels, output.logits.ncols())?;
            session.optimizer_step()?;
            session.lazy_reset_grad()?;
            totals.add(output.loss, &output.logits, &labels);
            self.state.global_step += 1;
            progress.advance(1);
        }
        progress.finish();
        Ok(EpochTraining { totals, learning_rate, input_seconds, seconds: started.elapsed().as_secs_f64() })
    }

    /// Early stopping's verdict on the epoch, and its checkpoints: always
    /// the latest (with optimizer state), and the best (weights only) when
    /// `monitor` improves on the best so far by more than `min_delta`.
    fn keep_checkpoints(&mut self, session: &TrainingSession, epoch: usize, monitor: f64) -> Result<Kept> {
        let state = &mut self.state;
        let mut tracker = Tracker {
            best: state.best.as_ref().map(|b| (b.monitor, b.epoch)),
            epochs_since_best: state.epochs_since_best,
        };
        // The monitor is a loss: lower is better.
        let improved = tracker.observe(monitor, epoch, false, self.run.config.min_delta);

        // Checkpoints first, then the state that names them, then clean-up:
        // whenever the process stops, state.json names complete files.
        let latest = format!("epoch-{epoch:04}.ckpt");
        save_checkpoint_atomically(session, &self.checkpoints.join(&latest), true)?;
        let mut stale: Vec<String> = state.latest_checkpoint.replace(latest).into_iter().collect();
        if improved {
            let name = format!("best-epoch-{epoch:04}.ckpt");
            save_checkpoint_atomically(session, &self.checkpoints.join(&name), false)?;
            stale.extend(state.best.replace(Best { epoch, monitor, checkpoint: name }).map(|b| b.checkpoint));
        }
        state.epochs_since_best = tracker.epochs_since_best;
        Ok(Kept { improved, stale })
    }

    /// Records the epoch, decides whether the run is over, writes
    /// `state.json` and the metrics line, then removes `stale` checkpoints.
    fn finish_epoch(&mut self, record: &EpochRecord, stale: &[String]) -> Result<()> {
        let config = self.run.config;
        let state = &mut self.state;
        state.completed_epochs = record.epoch;
        state.history.push(record.clone());
        let early_stop = config.patience.is_some_and(|p| state.epochs_since_best >= p);
        if early_stop {
            state.finished = Some(StopReason::EarlyStopped);
        } else if record.epoch == config.epochs {
            state.finished = Some(StopReason::Completed);
        }
        write_state(self.run.run_dir, state)?;
        append_metrics(self.run.run_dir, record)?;
        for old in stale {
            let _ = std::fs::remove_file(self.checkpoints.join(old));
        }
        Ok(())
    }
}

/// Loss and accuracy over a whole source, in eval mode, in index order.
pub fn evaluate(
    session: &mut TrainingSession,
    source: &mut dyn BatchSource,
    batch_size: usize,
    epoch: usize,
) -> Result<EvalTotals> {
    let (len, batch_size) = (source.len(), batch_size.max(1));
    let mut totals = Totals::default();
    let mut batches = source.batches(EpochOrder { seed: 0, epoch, shuffle: false }, batch_size);
    for step in 0..len.div_ceil(batch_size) {
        let expected = batch_size.min(len - step * batch_size);
        let batch = next_batch(&mut batches, expected)?;
        check_batch(&batch, expected)?;
        let labels = batch.labels.clone();
        let output = session.eval_step(batch.inputs, batch.labels)?;
        check_labels(&labels, output.logits.ncols())?;
        totals.add(output.loss, &output.logits, &labels);
    }
    Ok(totals)
}

/// Sums over batches: loss weighted by batch size, and correct top-1 predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Totals {
    pub loss_sum: f64,
    pub correct: usize,
    pub examples: usize,
}

/// What [`evaluate`] returns.
pub type EvalTotals = Totals;

impl Totals {
    fn add(&mut self, mean_loss: f64, logits: &Array2<f32>, labels: &[i64]) {
        self.loss_sum += mean_loss * labels.len() as f64;
        self.examples += labels.len();
        self.correct += logits
            .outer_iter()
            .zip(labels)
            .filter(|(row, &label)| train_kit::argmax(row.view()) == label as usize)
            .count();
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples.max(1) as f64
    }
}

/// The next batch of a pass that should hold `expected` more examples.
fn next_batch(batches: &mut Batches<'_>, expected: usize) -> Result<crate::data::Batch> {
    batches.next().unwrap_or_else(|| Err(DataError::BatchSize { expected, shape: Vec::new(), labels: 0 }.into()))
}

fn check_batch(batch: &crate::data::Batch, expected: usize) -> Result<()> {
    if batch.labels.len() != expected || batch.inputs.shape().first() != Some(&expected) {
        return Err(DataError::BatchSize {
            expected,
            shape: batch.inputs.shape().to_vec(),
            labels: batch.labels.len(),
        }
        .into());
    }
    Ok(())
}

fn check_labels(labels: &[i64], classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        Some(&label) => Err(DataError::LabelRange { label, classes }.into()),
        None => Ok(()),
    }
}

/// Saves to a temporary sibling, syncs it, renames it into place and syncs
/// the folder: the name appears only for a whole, durable checkpoint.
fn save_checkpoint_atomically(session: &TrainingSession, path: &Path, with_optimizer: bool) -> Result<()> {
    let partial = atomic_file::partial_path(path);
    session.save_checkpoint(&partial, with_optimizer)?;
    std::fs::File::open(&partial)
        .and_then(|file| file.sync_all())
        .map_err(FinetuneError::io("cannot sync the checkpoint", &partial))?;
    atomic_file::rename(&partial, path).map_err(|e| FinetuneError::Io {
        what: "cannot move a checkpoint to",
        path: e.path,
        source: e.source,
    })
}

/// Reads `state.json` if there is one.
pub fn read_state(run_dir: &Path) -> Result<Option<RunState>> {
    let path = run_dir.join(STATE_FILE);
    let state: RunState = match contracts::read(&path) {
        Ok(state) => state,
        Err(ContractError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if state.format_version != STATE_FORMAT {
        return Err(RunError::StateFormat { path, found: state.format_version, expected: STATE_FORMAT }.into());
    }
    Ok(Some(state))
}

fn write_state(run_dir: &Path, state: &RunState) -> Result<()> {
    Ok(contracts::write(&run_dir.join(STATE_FILE), state)?)
}

fn rewrite_metrics(run_dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    Ok(atomic_file::write(&path, &JsonLines::to_text(history)).map_err(ContractError::from)?)
}

fn append_metrics(run_dir: &Path, record: &EpochRecord) -> Result<()> {
    Ok(JsonLines::append_to(&run_dir.join(METRICS_FILE))?.append(record)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_weight_by_batch_size() {
        let mut t = Totals::default();
        let logits = Array2::from_shape_vec((2, 3), vec![0.0, 1.0, 0.0, 5.0, 0.0, 0.0]).unwrap();
        t.add(1.0, &logits, &[1, 2]);
        let logits = Array2::from_shape_vec((1, 3), vec![0.0, 0.0, 1.0]).unwrap();
        t.add(4.0, &logits, &[2]);
        assert!((t.loss() - 2.0).abs() < 1e-12);
        assert!((t.accuracy() - 2.0 / 3.0).abs() < 1e-12);
    }

    fn state(completed_epochs: usize) -> RunState {
        let record = EpochRecord {
            epoch: 1,
            epochs: 2,
            steps: 3,
            global_step: 3,
            learning_rate: 1e-3,
            train_loss: 0.1 + 0.2,
            train_accuracy: 1.0 / 3.0,
            val_loss: None,
            val_accuracy: None,
            monitor: 0.1 + 0.2,
            best: true,
            seconds: 0.5,
            train_examples_per_second: 7.25,
            input_seconds: 0.125,
        };
        RunState {
            format_version: STATE_FORMAT,
            run_fingerprint: "run".into(),
            artifacts_fingerprint: "artifacts".into(),
            config: TrainConfig { epochs: 2, ..Default::default() },
            completed_epochs,
            global_step: 3 * completed_epochs,
            latest_checkpoint: (completed_epochs > 0).then(|| "epoch-0001.ckpt".into()),
            best: (completed_epochs > 0).then(|| Best {
                epoch: 1,
                monitor: 0.1 + 0.2,
                checkpoint: "best-epoch-0001.ckpt".into(),
            }),
            epochs_since_best: 0,
            finished: None,
            history: vec![record; completed_epochs],
        }
    }

    #[test]
    fn state_and_metrics_go_through_contracts_exactly() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_state(dir.path()).unwrap(), None);
        let state = state(1);
        write_state(dir.path(), &state).unwrap();
        let text = std::fs::read_to_string(dir.path().join(STATE_FILE)).unwrap();
        assert!(text.starts_with("{\n  \"schema_version\": 1,\n  \"format_version\": 1,"), "{text}");
        assert_eq!(read_state(dir.path()).unwrap(), Some(state.clone()));

        rewrite_metrics(dir.path(), &state.history).unwrap();
        append_metrics(dir.path(), &state.history[0]).unwrap();
        let records: Vec<EpochRecord> = JsonLines::read_all(&dir.path().join(METRICS_FILE)).unwrap();
        assert_eq!(records, vec![state.history[0].clone(); 2]);

        let old = RunState { format_version: 7, ..state };
        write_state(dir.path(), &old).unwrap();
        let err = read_state(dir.path()).unwrap_err();
        assert!(matches!(err, FinetuneError::Run(RunError::StateFormat { found: 7, .. })), "{err}");
    }

    #[test]
    fn a_state_that_names_missing_checkpoints_or_disagrees_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let manifest = crate::ArtifactsManifest {
            format_version: 1,
            fingerprint: "artifacts".into(),
            training_api_version: String::new(),
            model_sha256: String::new(),
            input: "input".into(),
            logits: "logits".into(),
            trainable: Vec::new(),
            frozen: Vec::new(),
            loss: crate::Loss::CrossEntropy,
            optimizer: crate::OptimizerKind::AdamW,
            generation_seconds: 0.0,
        };
        let artifacts = Artifacts { dir: dir.path().join("artifacts"), manifest, generated: false };
        let config = TrainConfig { epochs: 2, ..Default::default() };
        let run = RunOptions {
            artifacts: &artifacts,
            run_dir: dir.path(),
            config: &config,
            session: SessionConfig::default(),
            progress: &progress::Silent,
        };
        let checkpoints = dir.path().join(CHECKPOINT_DIR);
        std::fs::create_dir_all(&checkpoints).unwrap();
        let folder = |state: RunState| RunFolder {
            run: &run,
            checkpoints: checkpoints.clone(),
            resumed_after_epoch: state.completed_epochs,
            steps_per_epoch: 3,
            state,
        };
        let message = |state: RunState| folder(state).check_resumable().unwrap_err().to_string();
        let state_file = dir.path().join(STATE_FILE).display().to_string();

        let err = message(state(1));
        assert!(err.contains(&state_file) && err.contains("epoch-0001.ckpt"), "{err}");
        std::fs::write(checkpoints.join("epoch-0001.ckpt"), b"").unwrap();
        std::fs::write(checkpoints.join("best-epoch-0001.ckpt"), b"").unwrap();
        assert!(folder(state(1)).check_resumable().is_ok());
        assert!(folder(state(1)).outcome(StopReason::Interrupted).is_ok());

        let escaping = RunState { latest_checkpoint: Some("../epoch-0001.ckpt".into()), ..state(1) };
        assert!(message(escaping).contains("../epoch-0001.ckpt"));
        let no_best = RunState { best: None, ..state(1) };
        assert!(message(no_best).contains("disagree"));
        let unfinished = state(2);
        assert!(message(unfinished).contains("unfinished"));
        assert!(matches!(
            folder(state(0)).outcome(StopReason::Completed),
            Err(FinetuneError::Run(RunError::NoEpoch { .. }))
        ));
    }

    #[test]
    fn config_is_checked() {
        assert!(TrainConfig { epochs: 0, ..Default::default() }.validate().is_err());
        assert!(TrainConfig { learning_rate: f64::NAN, ..Default::default() }.validate().is_err());
        assert!(TrainConfig::default().validate().is_ok());
        let parsed: TrainConfig =
            serde_json::from_str(r#"{"epochs":2,"batch_size":4,"learning_rate":0.001,"schedule":{"kind":"cosine_steps","warmup_steps":2,"min_lr":0.0}}"#)
                .unwrap();
        assert!(parsed.shuffle);
        assert_eq!(parsed.schedule, train_kit::Schedule::CosineSteps { warmup_steps: 2, min_lr: 0.0 });
    }
}
