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

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::Array2;
use progress::Progress;
use serde::{Deserialize, Serialize};

use crate::artifacts::Artifacts;
use crate::data::{epoch_order, BatchSource};
use crate::error::{FinetuneError, Result};
use crate::ort_training::{OrtTraining, SessionConfig, TrainingSession};
pub use contracts::finetune::{StopReason, TrainConfig};
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

/// `state.json`.
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
    let config = run.config;
    config.validate().map_err(FinetuneError::Config)?;
    if train.is_empty() {
        return Err(FinetuneError::Data("the training set is empty".into()));
    }
    let validation_len = validation.as_ref().map(|v| v.len());
    if validation_len == Some(0) {
        return Err(FinetuneError::Data("the validation set is empty; pass none instead".into()));
    }
    let run_fingerprint =
        spec::fingerprint("finetune-run", &(&run.artifacts.manifest.fingerprint, config, train.len(), validation_len))
            .0;
    let checkpoints = run.run_dir.join(CHECKPOINT_DIR);
    std::fs::create_dir_all(&checkpoints).map_err(FinetuneError::io("cannot create", &checkpoints))?;

    let mut state = match read_state(run.run_dir)? {
        Some(state) if state.run_fingerprint == run_fingerprint => state,
        Some(state) => {
            return Err(FinetuneError::Run {
                path: run.run_dir.to_owned(),
                message: format!(
                    "holds another run (fingerprint {}, this one is {run_fingerprint}): the artifacts, \
                     settings or data differ. Use another folder, or delete this one to start over",
                    state.run_fingerprint
                ),
            })
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
    rewrite_metrics(run.run_dir, &state.history)?;
    let resumed_after_epoch = state.completed_epochs;
    let outcome = |state: &RunState, stop: StopReason| -> Result<TrainOutcome> {
        let best = state.best.as_ref().ok_or_else(|| FinetuneError::Run {
            path: run.run_dir.to_owned(),
            message: "no epoch has completed".into(),
        })?;
        let latest = state.latest_checkpoint.as_ref().expect("set with best");
        Ok(TrainOutcome {
            state: state.clone(),
            stop,
            resumed_after_epoch,
            best_checkpoint: checkpoints.join(&best.checkpoint),
            latest_checkpoint: checkpoints.join(latest),
        })
    };
    if let Some(stop) = state.finished.clone() {
        return outcome(&state, stop);
    }

    let start_checkpoint = match &state.latest_checkpoint {
        Some(name) => checkpoints.join(name),
        None => run.artifacts.checkpoint(),
    };
    let mut session = ort.open(&run.artifacts.files(), &start_checkpoint, run.session, true)?;
    let steps_per_epoch = train.len().div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;

    for epoch in state.completed_epochs + 1..=config.epochs {
        let started = Instant::now();
        let order = epoch_order(train.len(), config.seed, epoch, config.shuffle);
        let mut totals = Totals::default();
        let mut learning_rate = config.learning_rate;
        let mut input_seconds = 0.0;
        run.progress.start(&format!("epoch {epoch}/{}", config.epochs), steps_per_epoch as u64);
        for (step, indices) in order.chunks(config.batch_size).enumerate() {
            learning_rate = config.schedule.lr(
                config.learning_rate,
                state.global_step as u64,
                steps_per_epoch as u64,
                total_steps as u64,
            );
            session.set_learning_rate(learning_rate)?;
            let fetch = Instant::now();
            let batch = train.batch(indices, epoch)?;
            input_seconds += fetch.elapsed().as_secs_f64();
            check_batch(&batch, indices.len())?;
            let labels = batch.labels.clone();
            let output = session.train_step(batch.inputs, batch.labels)?;
            if !output.loss.is_finite() {
                return Err(FinetuneError::NonFiniteLoss {
                    epoch,
                    step: step + 1,
                    global_step: state.global_step + 1,
                    loss: output.loss,
                });
            }
            check_labels(&labels, output.logits.ncols())?;
            session.optimizer_step()?;
            session.lazy_reset_grad()?;
            totals.add(output.loss, &output.logits, &labels);
            state.global_step += 1;
            run.progress.advance(1);
        }
        run.progress.finish();
        let train_seconds = started.elapsed().as_secs_f64();
        let (val_loss, val_accuracy) = match validation.as_deref_mut() {
            Some(source) => {
                let totals = evaluate(&mut session, source, config.batch_size, epoch)?;
                (Some(totals.loss()), Some(totals.accuracy()))
            }
            None => (None, None),
        };
        let monitor = val_loss.unwrap_or_else(|| totals.loss());
        let improved = state.best.as_ref().is_none_or(|b| monitor < b.monitor - config.min_delta);

        // Checkpoints first, then the state that names them, then clean-up:
        // whenever the process stops, state.json names complete files.
        let latest = format!("epoch-{epoch:04}.ckpt");
        save_checkpoint_atomically(&session, &checkpoints.join(&latest), true)?;
        let previous_latest = state.latest_checkpoint.replace(latest);
        let mut previous_best = None;
        if improved {
            let name = format!("best-epoch-{epoch:04}.ckpt");
            save_checkpoint_atomically(&session, &checkpoints.join(&name), false)?;
            previous_best = state.best.replace(Best { epoch, monitor, checkpoint: name }).map(|b| b.checkpoint);
            state.epochs_since_best = 0;
        } else {
            state.epochs_since_best += 1;
        }
        let record = EpochRecord {
            epoch,
            epochs: config.epochs,
            steps: steps_per_epoch,
            global_step: state.global_step,
            learning_rate,
            train_loss: totals.loss(),
            train_accuracy: totals.accuracy(),
            val_loss,
            val_accuracy,
            monitor,
            best: improved,
            seconds: started.elapsed().as_secs_f64(),
            train_examples_per_second: train.len() as f64 / train_seconds.max(1e-9),
            input_seconds,
        };
        state.completed_epochs = epoch;
        state.history.push(record.clone());
        let early_stop = config.patience.is_some_and(|p| state.epochs_since_best >= p);
        if early_stop {
            state.finished = Some(StopReason::EarlyStopped);
        } else if epoch == config.epochs {
            state.finished = Some(StopReason::Completed);
        }
        write_state(run.run_dir, &state)?;
        append_metrics(run.run_dir, &record)?;
        for old in previous_latest.iter().chain(&previous_best) {
            let _ = std::fs::remove_file(checkpoints.join(old));
        }
        let flow = on_epoch(&record);
        if let Some(stop) = state.finished.clone() {
            return outcome(&state, stop);
        }
        if flow.is_break() {
            return outcome(&state, StopReason::Interrupted);
        }
    }
    unreachable!("the last epoch sets `finished`")
}

/// Loss and accuracy over a whole source, in eval mode, in index order.
pub fn evaluate(
    session: &mut TrainingSession,
    source: &mut dyn BatchSource,
    batch_size: usize,
    epoch: usize,
) -> Result<EvalTotals> {
    let indices: Vec<usize> = (0..source.len()).collect();
    let mut totals = Totals::default();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.batch(chunk, epoch)?;
        check_batch(&batch, chunk.len())?;
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
            .filter(|(row, &label)| argmax(row.iter().copied()) == Some(label as usize))
            .count();
    }

    pub fn loss(&self) -> f64 {
        self.loss_sum / self.examples.max(1) as f64
    }

    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.examples.max(1) as f64
    }
}

fn argmax(values: impl Iterator<Item = f32>) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, v) in values.enumerate() {
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

fn check_batch(batch: &crate::data::Batch, expected: usize) -> Result<()> {
    if batch.labels.len() != expected || batch.inputs.shape().first() != Some(&expected) {
        return Err(FinetuneError::Data(format!(
            "asked for {expected} examples, the source gave inputs {:?} and {} labels",
            batch.inputs.shape(),
            batch.labels.len()
        )));
    }
    Ok(())
}

fn check_labels(labels: &[i64], classes: usize) -> Result<()> {
    match labels.iter().find(|&&l| l < 0 || l as usize >= classes) {
        Some(label) => Err(FinetuneError::Data(format!("label {label} is out of range for {classes} classes"))),
        None => Ok(()),
    }
}

fn save_checkpoint_atomically(session: &TrainingSession, path: &Path, with_optimizer: bool) -> Result<()> {
    let partial = atomic_file::partial_path(path);
    session.save_checkpoint(&partial, with_optimizer)?;
    std::fs::rename(&partial, path).map_err(FinetuneError::io("cannot move a checkpoint to", path))
}

/// Reads `state.json` if there is one.
pub fn read_state(run_dir: &Path) -> Result<Option<RunState>> {
    let path = run_dir.join(STATE_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(FinetuneError::Io { what: "cannot read", path, source: e }),
    };
    let state: RunState = serde_json::from_str(&text)
        .map_err(|e| FinetuneError::Run { path: path.clone(), message: format!("unreadable run state: {e}") })?;
    if state.format_version != STATE_FORMAT {
        return Err(FinetuneError::Run {
            path,
            message: format!("run state format {} is not {STATE_FORMAT}", state.format_version),
        });
    }
    Ok(Some(state))
}

fn write_state(run_dir: &Path, state: &RunState) -> Result<()> {
    let text = serde_json::to_string_pretty(state).expect("the state serialises") + "\n";
    write_atomically(&run_dir.join(STATE_FILE), text.as_bytes())
}

fn rewrite_metrics(run_dir: &Path, history: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for record in history {
        text += &serde_json::to_string(record).expect("records serialise");
        text.push('\n');
    }
    write_atomically(&run_dir.join(METRICS_FILE), text.as_bytes())
}

fn append_metrics(run_dir: &Path, record: &EpochRecord) -> Result<()> {
    let path = run_dir.join(METRICS_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(FinetuneError::io("cannot open", &path))?;
    let line = serde_json::to_string(record).expect("records serialise") + "\n";
    file.write_all(line.as_bytes()).map_err(FinetuneError::io("cannot append to", &path))
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_file::write(path, bytes).map_err(|e| FinetuneError::Io {
        what: "cannot write",
        path: e.path,
        source: e.source,
    })
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

    #[test]
    fn config_is_checked() {
        assert!(TrainConfig { epochs: 0, ..Default::default() }.validate().is_err());
        assert!(TrainConfig { learning_rate: f64::NAN, ..Default::default() }.validate().is_err());
        assert!(TrainConfig::default().validate().is_ok());
        let parsed: TrainConfig =
            serde_json::from_str(r#"{"epochs":2,"batch_size":4,"learning_rate":0.001,"schedule":{"kind":"cosine","warmup_steps":2,"min_lr":0.0}}"#)
                .unwrap();
        assert!(parsed.shuffle);
        assert_eq!(parsed.schedule, train_kit::Schedule::CosineSteps { warmup_steps: 2, min_lr: 0.0 });
    }
}
