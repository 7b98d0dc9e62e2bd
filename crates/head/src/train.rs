//! The training loop: mini-batches from a [`BatchSource`], one fused
//! forward/backward/update step per batch, validation after each epoch,
//! early stopping and best-weight restore.
//!
//! Determinism: shuffling and dropout draw from streams keyed by
//! (seed, epoch) and (seed, step, layer); every reduction runs in fixed-size
//! pieces (see `linalg`). The same seed gives bit-identical weights and
//! metrics whatever the number of rayon threads.

use std::time::{Duration, Instant};

use ndarray::{s, Array1, Array2, ArrayView2, ArrayViewMut2};
use rayon::prelude::*;

use crate::config::{ClassWeights, ConfigError, HeadConfig};
use crate::linalg::{weight_grad_block, BAND_ROWS, BLOCK_COLS};
use crate::loss::{balanced_class_weights, softmax_cross_entropy, LossOptions};
use crate::model::{bias_grad_into, dropout_mask, Deltas, ForwardCache, Mlp};
use crate::optim::{split_state, Optimizer, OptimizerConfig};
use crate::Scalar;
use train_kit::Xoshiro256;
use train_kit::{argmax_rows, EpochRecord, Monitor, Tracker};

/// Errors a source of training rows may raise (a streaming reader's I/O).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Rows of embeddings with their labels, read by index. The in-memory
/// [`InMemory`] is one; a reader over the feature cache can be another.
pub trait BatchSource<T> {
    /// Number of rows.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Width of a row (the embedding size).
    fn dim(&self) -> usize;
    /// All labels, in row order (small even for large sets, and needed up
    /// front for balanced class weights).
    fn labels(&self) -> &[usize];
    /// Copies rows `indices` into `out` (`[indices.len(), dim]`), in order.
    fn fill(&mut self, indices: &[usize], out: ArrayViewMut2<T>) -> Result<(), SourceError>;
}

/// A [`BatchSource`] over arrays already in memory.
#[derive(Clone, Copy, Debug)]
pub struct InMemory<'a, T> {
    features: ArrayView2<'a, T>,
    labels: &'a [usize],
}

impl<'a, T> InMemory<'a, T> {
    pub fn new(features: ArrayView2<'a, T>, labels: &'a [usize]) -> Self {
        assert_eq!(features.nrows(), labels.len(), "one label per row");
        InMemory { features, labels }
    }
}

impl<T: Scalar> BatchSource<T> for InMemory<'_, T> {
    fn len(&self) -> usize {
        self.labels.len()
    }
    fn dim(&self) -> usize {
        self.features.ncols()
    }
    fn labels(&self) -> &[usize] {
        self.labels
    }
    fn fill(&mut self, indices: &[usize], mut out: ArrayViewMut2<T>) -> Result<(), SourceError> {
        for (mut row, &i) in out.rows_mut().into_iter().zip(indices) {
            row.assign(&self.features.row(i));
        }
        Ok(())
    }
}

/// Why training stopped without a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "loss became {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         lower the learning rate, or check the embeddings for NaN/inf"
    )]
    NonFiniteLoss { epoch: usize, step: usize, global_step: u64, loss: f64 },
    #[error("the training set is empty")]
    EmptyTrainingSet,
    #[error("the embeddings have no values (width 0)")]
    ZeroWidth,
    #[error("{set} rows have {got} values but the model takes {expected}")]
    InputWidth { set: &'static str, expected: usize, got: usize },
    #[error("{set} row {row} has label {label}, but there are only {classes} classes")]
    LabelOutOfRange { set: &'static str, row: usize, label: usize, classes: usize },
    #[error("reading a batch: {0}")]
    Source(#[source] SourceError),
}

/// Wall time of one step's phases.
#[derive(Clone, Copy, Debug, Default)]
pub struct StepTimings {
    /// Forward pass (matrix products, activations, dropout).
    pub forward: Duration,
    /// Loss and its gradient.
    pub loss: Duration,
    /// Back-propagation of the deltas (`dz·Wᵀ` products).
    pub backward: Duration,
    /// Weight-gradient products fused with the optimiser update.
    pub update: Duration,
}

/// What one step saw: the loss before the update and the training-mode
/// correct count.
#[derive(Clone, Copy, Debug)]
pub struct StepOutcome {
    /// Mean loss of the batch. When not finite, no update was made.
    pub loss: f64,
    pub correct: usize,
    pub timings: StepTimings,
}

const STREAM_DROPOUT: u64 = 0xD0;
const STREAM_SHUFFLE: u64 = 0x5F;

/// A model, its optimiser and reusable buffers: one call to [`Trainer::step`]
/// per mini-batch.
pub struct Trainer<T> {
    model: Mlp<T>,
    optimizer: Optimizer<T>,
    class_weights: Option<Vec<T>>,
    label_smoothing: T,
    dropout: f64,
    seed: u64,
    cache: ForwardCache<T>,
    deltas: Deltas<T>,
    masks: Vec<Array2<T>>,
    dlogits: Array2<T>,
    bias_grad: Array1<T>,
}

impl<T: Scalar> Trainer<T> {
    pub fn new(
        model: Mlp<T>,
        optimizer: OptimizerConfig,
        dropout: f64,
        label_smoothing: f64,
        class_weights: Option<&[f64]>,
        seed: u64,
    ) -> Self {
        let lens: Vec<usize> = model.layers().iter().flat_map(|l| [l.weight.len(), l.bias.len()]).collect();
        if let Some(w) = class_weights {
            assert_eq!(w.len(), model.num_classes(), "one class weight per class");
        }
        Trainer {
            optimizer: Optimizer::new(optimizer, &lens),
            model,
            class_weights: class_weights.map(|w| w.iter().map(|&x| T::of(x)).collect()),
            label_smoothing: T::of(label_smoothing),
            dropout,
            seed,
            cache: ForwardCache::default(),
            deltas: Deltas::default(),
            masks: Vec::new(),
            dlogits: Array2::zeros((0, 0)),
            bias_grad: Array1::zeros(0),
        }
    }

    pub fn model(&self) -> &Mlp<T> {
        &self.model
    }

    pub fn into_model(self) -> Mlp<T> {
        self.model
    }

    pub fn optimizer(&self) -> &Optimizer<T> {
        &self.optimizer
    }

    /// One optimisation step on a batch at learning rate `lr`.
    ///
    /// Order: forward, loss, deltas for every layer (with the old weights),
    /// then per layer the weight gradient block by block, each block
    /// applied by the optimiser while still in cache. No buffer the size of
    /// the weights is written besides the weights and the optimiser state.
    pub fn step(&mut self, x: ArrayView2<T>, labels: &[usize], lr: f64) -> StepOutcome {
        let mut timings = StepTimings::default();
        let t0 = Instant::now();
        let batch = x.nrows();
        let step_index = self.optimizer.steps();
        let hidden = self.model.layers().len() - 1;
        if self.dropout > 0.0 {
            self.masks.resize_with(hidden, || Array2::zeros((0, 0)));
            for l in 0..hidden {
                let shape = (batch, self.model.layers()[l].outputs());
                if self.masks[l].dim() != shape {
                    self.masks[l] = Array2::zeros(shape);
                }
                let mut rng = Xoshiro256::stream(self.seed, &[STREAM_DROPOUT, step_index, l as u64]);
                dropout_mask(&mut rng, self.dropout, self.masks[l].view_mut());
            }
        }
        let masks: &[Array2<T>] = if self.dropout > 0.0 { &self.masks } else { &[] };
        self.model.forward_train(x, masks, &mut self.cache);
        let t1 = Instant::now();
        timings.forward = t1 - t0;

        let logits = self.cache.pre.last().expect("non-empty").view();
        if self.dlogits.dim() != logits.dim() {
            self.dlogits = Array2::zeros(logits.dim());
        }
        let options =
            LossOptions { label_smoothing: self.label_smoothing, class_weights: self.class_weights.as_deref() };
        let loss = softmax_cross_entropy(logits, labels, &options, Some(self.dlogits.view_mut()));
        let correct = argmax_rows(logits).iter().zip(labels).filter(|(p, y)| p == y).count();
        let t2 = Instant::now();
        timings.loss = t2 - t1;
        if !loss.is_finite() {
            return StepOutcome { loss, correct, timings };
        }

        self.model.backward_deltas(&self.cache, masks, self.dlogits.view(), &mut self.deltas);
        let t3 = Instant::now();
        timings.backward = t3 - t2;

        let rule = self.optimizer.begin_step(lr);
        let Trainer { model, optimizer, cache, deltas, bias_grad, .. } = self;
        for (l, layer) in model.layers_mut().iter_mut().enumerate() {
            let input = Mlp::layer_input(x, cache, l);
            let dz = deltas.dz[l].view();
            let (outputs, inputs) = (layer.outputs(), layer.inputs());
            let band_len = BAND_ROWS * inputs;
            let weights = layer.weight.as_slice_mut().expect("weights are contiguous");
            let pieces = split_state(optimizer.state_mut(2 * l), weights.len(), band_len);
            weights.par_chunks_mut(band_len).zip(pieces).enumerate().for_each_init(
                || vec![T::zero(); BAND_ROWS * BLOCK_COLS],
                |buf, (b, (w, (first, second)))| {
                    let rows = w.len() / inputs;
                    for input0 in (0..inputs).step_by(BLOCK_COLS) {
                        let cols = BLOCK_COLS.min(inputs - input0);
                        let grad = &mut buf[..rows * cols];
                        let block = ArrayViewMut2::from_shape((rows, cols), &mut *grad).expect("block shape");
                        weight_grad_block(input, dz, b * BAND_ROWS, input0, block);
                        for (r, g) in grad.chunks_exact(cols).enumerate() {
                            let span = r * inputs + input0..r * inputs + input0 + cols;
                            rule.apply(&mut w[span.clone()], g, part(first, span.clone()), part(second, span), true);
                        }
                    }
                },
            );
            if bias_grad.len() != outputs {
                *bias_grad = Array1::zeros(outputs);
            }
            bias_grad_into(dz, bias_grad);
            let state = optimizer.state_mut(2 * l + 1);
            rule.apply(
                layer.bias.as_slice_mut().expect("bias is contiguous"),
                bias_grad.as_slice().expect("contiguous"),
                &mut state.first,
                &mut state.second,
                false,
            );
        }
        timings.update = t3.elapsed();
        StepOutcome { loss, correct, timings }
    }
}

impl<T: Scalar> Trainer<T> {
    /// Benchmark support: re-runs the last step's update phase in two
    /// halves, timing each: the weight-gradient products alone (tiles
    /// computed and dropped), then the optimiser pass alone (over one
    /// gradient tile kept in cache, at learning rate 0). Weights are
    /// unchanged, but the optimiser's moments and step count advance, so
    /// call it only in benchmarks.
    #[doc(hidden)]
    pub fn time_update_halves(&mut self, x: ArrayView2<T>) -> (Duration, Duration) {
        let Trainer { model, optimizer, cache, deltas, .. } = self;
        let started = Instant::now();
        for (l, layer) in model.layers().iter().enumerate() {
            let input = Mlp::layer_input(x, cache, l);
            let dz = deltas.dz[l].view();
            let (outputs, inputs) = (layer.outputs(), layer.inputs());
            (0..outputs.div_ceil(BAND_ROWS)).into_par_iter().for_each_init(
                || vec![T::zero(); BAND_ROWS * BLOCK_COLS],
                |buf, b| {
                    let rows = BAND_ROWS.min(outputs - b * BAND_ROWS);
                    for input0 in (0..inputs).step_by(BLOCK_COLS) {
                        let cols = BLOCK_COLS.min(inputs - input0);
                        let block = ArrayViewMut2::from_shape((rows, cols), &mut buf[..rows * cols]).expect("block");
                        weight_grad_block(input, dz, b * BAND_ROWS, input0, block);
                    }
                },
            );
        }
        let grads_only = started.elapsed();
        let rule = optimizer.begin_step(0.0);
        let started = Instant::now();
        for (l, layer) in model.layers_mut().iter_mut().enumerate() {
            let inputs = layer.inputs();
            let band_len = BAND_ROWS * inputs;
            let weights = layer.weight.as_slice_mut().expect("contiguous");
            let pieces = split_state(optimizer.state_mut(2 * l), weights.len(), band_len);
            let grad = [T::of(1e-3); BLOCK_COLS];
            weights.par_chunks_mut(band_len).zip(pieces).for_each(|(w, (first, second))| {
                for start in (0..w.len()).step_by(BLOCK_COLS) {
                    let span = start..(start + BLOCK_COLS).min(w.len());
                    let g = &grad[..span.len()];
                    rule.apply(&mut w[span.clone()], g, part(first, span.clone()), part(second, span), true);
                }
            });
        }
        (grads_only, started.elapsed())
    }
}

/// The `span` of an optimiser state slice, or the empty slice when the
/// optimiser keeps no such state.
fn part<T>(state: &mut [T], span: std::ops::Range<usize>) -> &mut [T] {
    if state.is_empty() {
        state
    } else {
        &mut state[span]
    }
}

/// Rows per forward pass when scoring a whole set. A constant, not a
/// function of memory: every scoring path (in memory or streamed) cuts a
/// set at the same rows, so their results agree bit for bit.
pub const EVAL_BATCH: usize = 256;

/// Receives scored rows: the first row's index and the batch's scores
/// (`[rows, classes]`).
pub type OnBatch<'a, T> = dyn FnMut(usize, ArrayView2<T>) -> Result<(), SourceError> + 'a;

/// Scores `source` in row order, [`EVAL_BATCH`] rows at a time: `each`
/// gets the first row's index and the batch's logits (`[rows, classes]`).
/// Memory holds one batch of embeddings, whatever the set's size.
pub fn logits_batches<T: Scalar>(
    model: &Mlp<T>,
    source: &mut dyn BatchSource<T>,
    each: &mut OnBatch<T>,
) -> Result<(), SourceError> {
    let n = source.len();
    let mut buf = Array2::zeros((EVAL_BATCH.min(n), source.dim()));
    let mut indices = Vec::with_capacity(EVAL_BATCH);
    for first in (0..n).step_by(EVAL_BATCH) {
        indices.clear();
        indices.extend(first..(first + EVAL_BATCH).min(n));
        let mut x = buf.slice_mut(s![..indices.len(), ..]);
        source.fill(&indices, x.view_mut())?;
        each(first, model.logits(x.view()).view())?;
    }
    Ok(())
}

/// Logits for every row of `source`, in row order (`[rows, classes]`): the
/// embeddings pass one batch at a time (see [`logits_batches`]).
pub fn logits_of<T: Scalar>(model: &Mlp<T>, source: &mut dyn BatchSource<T>) -> Result<Array2<T>, SourceError> {
    let mut logits = Array2::zeros((source.len(), model.num_classes()));
    logits_batches(model, source, &mut |first, batch| {
        logits.slice_mut(s![first..first + batch.nrows(), ..]).assign(&batch);
        Ok(())
    })?;
    Ok(logits)
}

/// The result of [`fit`].
#[derive(Clone, Debug)]
pub struct FitOutcome<T> {
    /// The best epoch's weights when restoring (the default), else the last.
    pub model: Mlp<T>,
    pub history: Vec<EpochRecord>,
    /// The metric actually monitored (a training metric without validation).
    pub monitor: Monitor,
    /// 1-based epoch with the best monitored value.
    pub best_epoch: usize,
    pub stopped_early: bool,
    /// The per-class weights used, after resolving "balanced".
    pub class_weights: Option<Vec<f64>>,
}

/// Resolves the configured class weights against the training labels.
pub fn resolve_class_weights(config: &HeadConfig, labels: &[usize], classes: usize) -> Option<Vec<f64>> {
    match &config.class_weights {
        ClassWeights::None => None,
        ClassWeights::Balanced => Some(balanced_class_weights(labels, classes)),
        ClassWeights::Explicit(w) => Some(w.clone()),
    }
}

/// Trains a freshly initialised head (sizes from `config.hidden`).
pub fn fit<T: Scalar>(
    config: &HeadConfig,
    classes: usize,
    train: &mut dyn BatchSource<T>,
    validation: Option<&mut dyn BatchSource<T>>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<FitOutcome<T>, TrainError> {
    config.validate(classes)?;
    if train.dim() == 0 {
        return Err(TrainError::ZeroWidth);
    }
    let sizes: Vec<usize> =
        std::iter::once(train.dim()).chain(config.hidden.iter().copied()).chain([classes]).collect();
    let model = Mlp::init(&sizes, config.activation, config.init, config.seed);
    fit_model(config, model, train, validation, on_epoch)
}

fn check_source<T: Scalar>(
    set: &'static str,
    source: &dyn BatchSource<T>,
    width: usize,
    classes: usize,
) -> Result<(), TrainError> {
    if source.dim() != width {
        return Err(TrainError::InputWidth { set, expected: width, got: source.dim() });
    }
    if let Some((row, &label)) = source.labels().iter().enumerate().find(|(_, &y)| y >= classes) {
        return Err(TrainError::LabelOutOfRange { set, row, label, classes });
    }
    Ok(())
}

/// Trains `model` (initialised or pre-trained) with `config`'s optimiser,
/// schedule, batches and early stopping. `config.hidden` and `init` are not
/// used. Calls `on_epoch` after each epoch.
pub fn fit_model<T: Scalar>(
    config: &HeadConfig,
    model: Mlp<T>,
    train: &mut dyn BatchSource<T>,
    validation: Option<&mut dyn BatchSource<T>>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<FitOutcome<T>, TrainError> {
    let classes = model.num_classes();
    check_inputs(config, &model, train, validation.as_deref())?;
    // An empty validation set is no validation: the monitor falls back to
    // the training metric.
    let mut validation = validation.filter(|v| !v.is_empty());
    let monitor = if validation.is_some() {
        config.early_stopping.monitor
    } else {
        config.early_stopping.monitor.without_validation()
    };
    let class_weights = resolve_class_weights(config, train.labels(), classes);
    let mut trainer = Trainer::new(
        model,
        config.optimizer.clone(),
        config.dropout,
        config.label_smoothing,
        class_weights.as_deref(),
        config.seed,
    );
    let mut epochs = Epochs::new(config, train.len(), train.dim());
    // Validation loss is smoothed like training's, but never class-weighted.
    let eval_loss = LossOptions { label_smoothing: T::of(config.label_smoothing), class_weights: None };

    let mut history = Vec::new();
    let mut tracker = Tracker::default();
    let mut best_model: Option<Mlp<T>> = None;
    let mut stopped_early = false;
    for epoch in 0..config.epochs {
        let started = Instant::now();
        let pass = epochs.train_one(config, epoch, &mut trainer, train)?;
        let (val_loss, val_accuracy) = match validation.as_deref_mut() {
            Some(v) => {
                let (loss, accuracy) = validate(trainer.model(), v, &eval_loss)?;
                (Some(loss), Some(accuracy))
            }
            None => (None, None),
        };
        let value = monitored_value(monitor, &pass, val_loss, val_accuracy);
        let improved = tracker.observe(value, epoch + 1, monitor.maximise(), config.early_stopping.min_delta);
        if improved && config.early_stopping.restore_best {
            best_model = Some(trainer.model().clone());
        }
        let record = EpochRecord {
            epoch: epoch + 1,
            epochs: config.epochs,
            steps: epochs.steps_per_epoch as usize,
            global_step: (epoch + 1) * epochs.steps_per_epoch as usize,
            learning_rate: pass.lr,
            train_loss: pass.loss,
            train_accuracy: pass.accuracy,
            val_loss,
            val_accuracy,
            monitor: value,
            best: improved,
            seconds: started.elapsed().as_secs_f64(),
            train_examples_per_second: train.len() as f64 / pass.seconds.max(1e-9),
            input_seconds: 0.0,
        };
        on_epoch(&record);
        history.push(record);
        // The last epoch ends the run anyway: stopping there is not "early".
        let out_of_patience = tracker.out_of_patience(config.early_stopping.patience);
        if config.early_stopping.enabled && out_of_patience && epoch + 1 < config.epochs {
            stopped_early = true;
            break;
        }
    }
    let best_epoch = tracker.best_epoch().unwrap_or(history.len());
    let model = best_model.unwrap_or_else(|| trainer.into_model());
    Ok(FitOutcome { model, history, monitor, best_epoch, stopped_early, class_weights })
}

/// Refuses a configuration or data the model cannot train on, before any
/// work: a bad config, zero-width embeddings, no training rows, rows of the
/// wrong width or labels beyond the model's classes.
fn check_inputs<T: Scalar>(
    config: &HeadConfig,
    model: &Mlp<T>,
    train: &dyn BatchSource<T>,
    validation: Option<&dyn BatchSource<T>>,
) -> Result<(), TrainError> {
    let classes = model.num_classes();
    config.validate(classes)?;
    if model.input_dim() == 0 {
        return Err(TrainError::ZeroWidth);
    }
    if train.is_empty() {
        return Err(TrainError::EmptyTrainingSet);
    }
    check_source("training", train, model.input_dim(), classes)?;
    if let Some(v) = validation {
        check_source("validation", v, model.input_dim(), classes)?;
    }
    Ok(())
}

/// What one epoch's pass over the training rows measured.
struct TrainPass {
    /// Mean loss over the epoch's rows.
    loss: f64,
    /// Training-mode accuracy (dropout on).
    accuracy: f64,
    /// The learning rate of the epoch's last step.
    lr: f64,
    /// Wall time of the pass (shuffle included, validation not).
    seconds: f64,
}

/// The mini-batch plan shared by every epoch: batch size and step counts
/// (the schedule needs them), the row order and one reused batch buffer.
struct Epochs<T> {
    batch: usize,
    steps_per_epoch: u64,
    total_steps: u64,
    base_lr: f64,
    order: Vec<usize>,
    x: Array2<T>,
}

impl<T: Scalar> Epochs<T> {
    fn new(config: &HeadConfig, rows: usize, dim: usize) -> Self {
        let batch = config.batch_size.min(rows);
        let steps_per_epoch = rows.div_ceil(batch) as u64;
        Epochs {
            batch,
            steps_per_epoch,
            total_steps: steps_per_epoch * config.epochs as u64,
            base_lr: config.optimizer.lr(),
            order: (0..rows).collect(),
            x: Array2::zeros((batch, dim)),
        }
    }

    /// One pass over the training rows (shuffled when configured), one
    /// step per mini-batch. A non-finite loss stops training, naming the
    /// step, before that step's update is applied.
    fn train_one(
        &mut self,
        config: &HeadConfig,
        epoch: usize,
        trainer: &mut Trainer<T>,
        train: &mut dyn BatchSource<T>,
    ) -> Result<TrainPass, TrainError> {
        let started = Instant::now();
        if config.shuffle {
            // Reset before shuffling, so an epoch's order depends only on
            // (seed, epoch), not on the epochs before it.
            self.order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
            Xoshiro256::stream(config.seed, &[STREAM_SHUFFLE, epoch as u64]).shuffle(&mut self.order);
        }
        let (mut loss_sum, mut correct, mut lr) = (0.0f64, 0usize, self.base_lr);
        for (s, indices) in self.order.chunks(self.batch).enumerate() {
            let global = epoch as u64 * self.steps_per_epoch + s as u64;
            lr = config.schedule.lr(self.base_lr, global, self.steps_per_epoch, self.total_steps);
            let labels: Vec<usize> = indices.iter().map(|&i| train.labels()[i]).collect();
            let mut xb = self.x.slice_mut(s![..indices.len(), ..]);
            train.fill(indices, xb.view_mut()).map_err(TrainError::Source)?;
            let out = trainer.step(xb.view(), &labels, lr);
            if !out.loss.is_finite() {
                return Err(TrainError::NonFiniteLoss {
                    epoch: epoch + 1,
                    step: s + 1,
                    global_step: global + 1,
                    loss: out.loss,
                });
            }
            loss_sum += out.loss * indices.len() as f64;
            correct += out.correct;
        }
        let rows = self.order.len() as f64;
        Ok(TrainPass {
            loss: loss_sum / rows,
            accuracy: correct as f64 / rows,
            lr,
            seconds: started.elapsed().as_secs_f64(),
        })
    }
}

/// Loss and accuracy of `model` on a validation set (inference mode).
fn validate<T: Scalar>(
    model: &Mlp<T>,
    validation: &mut dyn BatchSource<T>,
    eval_loss: &LossOptions<T>,
) -> Result<(f64, f64), TrainError> {
    let logits = logits_of(model, validation).map_err(TrainError::Source)?;
    let loss = softmax_cross_entropy(logits.view(), validation.labels(), eval_loss, None);
    let hits = argmax_rows(logits.view()).iter().zip(validation.labels()).filter(|(p, y)| p == y).count();
    Ok((loss, hits as f64 / validation.len() as f64))
}

/// The value early stopping watches this epoch. Validation metrics are
/// present whenever the monitor names one (see [`Monitor::without_validation`]).
fn monitored_value(monitor: Monitor, pass: &TrainPass, val_loss: Option<f64>, val_accuracy: Option<f64>) -> f64 {
    match monitor {
        Monitor::ValLoss => val_loss.expect("validation present"),
        Monitor::ValAccuracy => val_accuracy.expect("validation present"),
        Monitor::TrainLoss => pass.loss,
        Monitor::TrainAccuracy => pass.accuracy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::{BAND_ROWS, BLOCK_COLS, COL_CHUNK};
    use crate::model::Init;
    use crate::optim::{AdamConfig, SgdConfig};
    use crate::Activation;
    use train_kit::EarlyStopping;

    /// `classes` Gaussian-ish clusters around well separated centres.
    pub(crate) fn clusters(n: usize, dim: usize, classes: usize, seed: u64, spread: f32) -> (Array2<f32>, Vec<usize>) {
        let mut rng = Xoshiro256::new(seed);
        let centres = Array2::from_shape_simple_fn((classes, dim), || (rng.normal() * 3.0) as f32);
        let labels: Vec<usize> = (0..n).map(|i| i % classes).collect();
        let x = Array2::from_shape_fn((n, dim), |(i, j)| centres[[labels[i], j]] + spread * rng.normal() as f32);
        (x, labels)
    }

    fn quiet() -> impl FnMut(&EpochRecord) {
        |_| {}
    }

    #[test]
    fn fused_step_equals_explicit_gradients_then_optimizer_step() {
        // Wide enough for several row tiles and column chunks.
        let sizes = [BLOCK_COLS + 5, COL_CHUNK + 7, 3];
        const { assert!(COL_CHUNK + 7 > 2 * BAND_ROWS) };
        let (x, labels) = clusters(9, sizes[0], 3, 1, 1.0);
        let model = Mlp::<f32>::init(&sizes, Activation::Relu, Init::GlorotUniform, 3);
        let configs = [
            OptimizerConfig::Adam(AdamConfig { weight_decay: 0.01, ..Default::default() }),
            OptimizerConfig::AdamW(Default::default()),
            OptimizerConfig::Sgd(SgdConfig { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.01 }),
        ];
        for config in configs {
            let mut trainer = Trainer::new(model.clone(), config.clone(), 0.0, 0.1, Some(&[1.0, 2.0, 0.5]), 0);
            let mut reference = model.clone();
            let lens: Vec<usize> = model.layers().iter().flat_map(|l| [l.weight.len(), l.bias.len()]).collect();
            let mut optimizer = Optimizer::<f32>::new(config, &lens);
            let weights = [1.0f32, 2.0, 0.5];
            let opts = LossOptions { label_smoothing: 0.1, class_weights: Some(&weights[..]) };
            for step in 0..3 {
                let lr = 1e-2 / (step + 1) as f64;
                trainer.step(x.view(), &labels, lr);

                let mut cache = ForwardCache::default();
                reference.forward_train(x.view(), &[], &mut cache);
                let mut dlogits = Array2::zeros((9, 3));
                softmax_cross_entropy(cache.pre[1].view(), &labels, &opts, Some(dlogits.view_mut()));
                let mut deltas = Deltas::default();
                reference.backward_deltas(&cache, &[], dlogits.view(), &mut deltas);
                let grads = reference.gradients(x.view(), &cache, &deltas);
                let grad_slices: Vec<&[f32]> =
                    grads.iter().flat_map(|g| [g.weight.as_slice().unwrap(), g.bias.as_slice().unwrap()]).collect();
                let mut params: Vec<&mut [f32]> = reference
                    .layers_mut()
                    .iter_mut()
                    .flat_map(|l| [l.weight.as_slice_mut().unwrap(), l.bias.as_slice_mut().unwrap()])
                    .collect();
                optimizer.step(lr, &mut params, &grad_slices, &[true, false, true, false]);
            }
            assert_eq!(trainer.model(), &reference, "fused and explicit paths agree bit for bit");
        }
    }

    #[test]
    fn separable_clusters_reach_full_training_accuracy() {
        let (x, labels) = clusters(240, 20, 4, 2, 0.5);
        for hidden in [vec![], vec![32]] {
            let config = HeadConfig {
                hidden,
                epochs: 30,
                batch_size: 16,
                optimizer: OptimizerConfig::Adam(AdamConfig { lr: 1e-2, ..Default::default() }),
                early_stopping: EarlyStopping { enabled: false, restore_best: false, ..Default::default() },
                ..Default::default()
            };
            let out = fit(&config, 4, &mut InMemory::new(x.view(), &labels), None, &mut quiet()).unwrap();
            let predicted = argmax_rows(out.model.logits(x.view()).view());
            assert_eq!(predicted, labels);
            assert_eq!(out.history.last().unwrap().train_accuracy, 1.0);
            assert_eq!(out.monitor, Monitor::TrainLoss);
        }
    }

    #[test]
    fn every_optimizer_and_schedule_learns() {
        let (x, labels) = clusters(120, 10, 3, 4, 0.5);
        let optimizers = [
            OptimizerConfig::Sgd(SgdConfig { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 1e-4 }),
            OptimizerConfig::AdamW(Default::default()),
        ];
        let schedules = [
            Schedule::Step { every_epochs: 5, gamma: 0.5 },
            Schedule::Cosine { warmup_epochs: 1.0, final_lr_ratio: 0.0 },
            Schedule::OneCycle { pct_start: 0.3, div_factor: 25.0, final_div_factor: 1e4 },
        ];
        for optimizer in &optimizers {
            for schedule in &schedules {
                let config = HeadConfig {
                    hidden: vec![16],
                    dropout: 0.2,
                    epochs: 15,
                    batch_size: 8,
                    optimizer: optimizer.clone(),
                    schedule: schedule.clone(),
                    label_smoothing: 0.1,
                    class_weights: ClassWeights::Balanced,
                    ..Default::default()
                };
                let out = fit(&config, 3, &mut InMemory::new(x.view(), &labels), None, &mut quiet()).unwrap();
                let first = out.history.first().unwrap().train_loss;
                let best = out.history.iter().map(|r| r.train_loss).fold(f64::INFINITY, f64::min);
                assert!(best < 0.6 * first, "{optimizer:?} {schedule:?}: {first} → {best}");
                assert_eq!(out.class_weights.as_deref(), Some(&[1.0, 1.0, 1.0][..]));
            }
        }
    }

    use train_kit::Schedule;

    fn train_in_pool(
        threads: usize,
        config: &HeadConfig,
        x: &Array2<f32>,
        labels: &[usize],
        vx: &Array2<f32>,
        vl: &[usize],
    ) -> FitOutcome<f32> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut val = InMemory::new(vx.view(), vl);
            fit(config, 3, &mut InMemory::new(x.view(), labels), Some(&mut val), &mut quiet()).unwrap()
        })
    }

    #[test]
    fn same_seed_is_bit_identical_with_one_or_two_threads() {
        // Shapes with several row tiles and column chunks, dropout on, an
        // uneven last batch.
        let (x, labels) = clusters(75, BLOCK_COLS + 9, 3, 5, 2.0);
        let (vx, vl) = clusters(30, BLOCK_COLS + 9, 3, 6, 2.0);
        let config = HeadConfig {
            hidden: vec![COL_CHUNK * 2 + 3, 40],
            dropout: 0.3,
            epochs: 3,
            batch_size: 16,
            ..Default::default()
        };
        let one = train_in_pool(1, &config, &x, &labels, &vx, &vl);
        let two = train_in_pool(2, &config, &x, &labels, &vx, &vl);
        assert_eq!(one.model, two.model);
        let strip = |h: &[EpochRecord]| -> Vec<EpochRecord> {
            h.iter().map(|r| EpochRecord { seconds: 0.0, train_examples_per_second: 0.0, ..r.clone() }).collect()
        };
        assert_eq!(strip(&one.history), strip(&two.history));
        let other_seed = train_in_pool(2, &HeadConfig { seed: 1, ..config }, &x, &labels, &vx, &vl);
        assert_ne!(one.model, other_seed.model);
    }

    #[test]
    fn nan_in_the_data_stops_with_epoch_and_step() {
        let (mut x, labels) = clusters(40, 6, 2, 7, 0.5);
        x[[13, 2]] = f32::NAN;
        let config = HeadConfig { hidden: vec![4], batch_size: 8, shuffle: false, ..Default::default() };
        let err = fit(&config, 2, &mut InMemory::new(x.view(), &labels), None, &mut quiet()).unwrap_err();
        match err {
            TrainError::NonFiniteLoss { epoch, step, global_step, loss } => {
                assert_eq!((epoch, step, global_step), (1, 2, 2));
                assert!(loss.is_nan());
            }
            other => panic!("unexpected {other}"),
        }
        let message =
            fit(&config, 2, &mut InMemory::new(x.view(), &labels), None, &mut quiet()).unwrap_err().to_string();
        assert!(message.contains("epoch 1, step 2"), "{message}");
    }

    #[test]
    fn diverging_learning_rate_is_caught() {
        let (x, labels) = clusters(64, 8, 2, 8, 0.5);
        let config = HeadConfig {
            hidden: vec![8],
            batch_size: 8,
            epochs: 50,
            optimizer: OptimizerConfig::Sgd(SgdConfig { lr: 1e30, ..Default::default() }),
            ..Default::default()
        };
        let err = fit(&config, 2, &mut InMemory::new(x.view(), &labels), None, &mut quiet()).unwrap_err();
        assert!(matches!(err, TrainError::NonFiniteLoss { .. }), "{err}");
    }

    #[test]
    fn early_stopping_restores_the_best_epoch() {
        // Validation labels unrelated to the features: val_loss soon rises.
        let (x, labels) = clusters(60, 8, 3, 9, 2.5);
        let (vx, _) = clusters(30, 8, 3, 10, 2.5);
        let vl: Vec<usize> = (0..30).map(|i| (i * 7 / 3) % 3).collect();
        let config = HeadConfig {
            hidden: vec![32],
            epochs: 60,
            batch_size: 8,
            optimizer: OptimizerConfig::Adam(AdamConfig { lr: 1e-2, ..Default::default() }),
            early_stopping: EarlyStopping { patience: 2, ..Default::default() },
            ..Default::default()
        };
        let mut lines = Vec::new();
        let mut val = InMemory::new(vx.view(), &vl);
        let out = fit(&config, 3, &mut InMemory::new(x.view(), &labels), Some(&mut val), &mut |r| {
            lines.push(r.summary_line())
        })
        .unwrap();
        assert!(out.stopped_early);
        assert_eq!(out.monitor, Monitor::ValLoss);
        assert_eq!(out.history.len(), out.best_epoch + 2, "stops after `patience` bad epochs");
        assert_eq!(lines.len(), out.history.len());
        assert!(lines[0].starts_with("epoch 1/60  loss ") && lines[0].contains("val_loss"));
        let best = &out.history[out.best_epoch - 1];
        assert!(best.best);
        let best_loss = out.history.iter().filter_map(|r| r.val_loss).fold(f64::INFINITY, f64::min);
        assert_eq!(best.val_loss, Some(best_loss));
        // The returned weights are that epoch's: their val_loss is the best one.
        let logits = logits_of(&out.model, &mut InMemory::new(vx.view(), &vl)).unwrap();
        let loss = softmax_cross_entropy(logits.view(), &vl, &LossOptions::default(), None);
        assert_eq!(Some(loss), best.val_loss);
    }

    #[test]
    fn bad_inputs_are_reported() {
        let (x, labels) = clusters(10, 4, 2, 11, 1.0);
        let config = HeadConfig { hidden: vec![3], ..Default::default() };
        let err = fit(&config, 2, &mut InMemory::new(x.view(), &[0, 1, 2, 0, 1, 0, 1, 0, 1, 0]), None, &mut quiet());
        assert!(matches!(err, Err(TrainError::LabelOutOfRange { row: 2, label: 2, .. })));
        let (vx, vl) = clusters(4, 5, 2, 12, 1.0);
        let mut val = InMemory::new(vx.view(), &vl);
        let err = fit(&config, 2, &mut InMemory::new(x.view(), &labels), Some(&mut val), &mut quiet());
        assert!(matches!(err, Err(TrainError::InputWidth { set: "validation", .. })));
        let empty = Array2::<f32>::zeros((0, 4));
        let err = fit(&config, 2, &mut InMemory::new(empty.view(), &[]), None, &mut quiet());
        assert!(matches!(err, Err(TrainError::EmptyTrainingSet)));
        let no_width = Array2::<f32>::zeros((2, 0));
        let err = fit(&config, 2, &mut InMemory::new(no_width.view(), &[0, 1]), None, &mut quiet());
        assert!(matches!(err, Err(TrainError::ZeroWidth)));
        let bad = HeadConfig { batch_size: 0, ..Default::default() };
        let err = fit(&bad, 2, &mut InMemory::new(x.view(), &labels), None, &mut quiet());
        assert!(matches!(err, Err(TrainError::Config(_))));
    }
}
