//! The fine-tune stage as one library call: [`plan`] reads the inputs,
//! resolves the model, composes it with the head, chooses what trains and
//! how the frozen prefix runs; [`Plan::run`] then writes into the output
//! folder:
//!
//! - `artifacts/artifacts-<fingerprint>/`: training artifacts (reused);
//! - `run/`: `state.json`, `metrics.jsonl`, `checkpoints/` (resumable);
//! - `model.onnx`: image in, probabilities out (the full network);
//! - `evaluation-test.json`: test-split metrics of `model.onnx` in ONNX
//!   Runtime 1.32 (the head stage's format), when the data has a test split;
//! - `finetune.json`: what ran, how fast, and where things are.
//!
//! Running the same job again resumes an interrupted run, or (when it
//! finished) re-exports and re-evaluates without training.
//!
//! `finetune train` runs it on an ingested dataset and the head stage's
//! weights; `finetune smoke` on random images and a random head (a check
//! and a benchmark: it trains nothing useful).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use contracts::finetune::{FinetuneConfig, FinetuneSummary, Optimizer, PrefixMode, SUMMARY_FILE};
use contracts::head::Activation;
use dataset::{Dataset, Split};
use ndarray::{ArrayD, IxDyn};
use onnx_graph::ModelProto;
use progress::Progress;
use spec::ModelSpec;

use crate::artifacts::{ensure_artifacts, ArtifactRequest, Artifacts};
use crate::data::EpochOrder;
use crate::data::{BatchSource, InMemory};
use crate::error::{FinetuneError, HeadError, Result, SetupError};
use crate::images::ImageSource;
use crate::infer::Inference;
use crate::ort_training::{Loss, OptimizerKind, OrtTraining, SessionConfig};
use crate::prefix::{PrefixCacheStats, PrefixSource, SplitGraph, StoredActivations};
use crate::select::{apply_batch_norm, select_parameters, ParameterSplit, Unfreeze};
use crate::stream::StreamedImages;
use crate::train::{EpochRecord, RunOptions, TrainOutcome};
use crate::{Augment, Schedule, TrainConfig};
use compose::{compose, ComposeOptions, Composed, DenseLayer, HeadInit};

/// The highest ONNX IR version ONNX Runtime 1.19 (the training API) reads.
pub const MAX_TRAINING_IR_VERSION: i64 = 10;

/// `evaluation-test.json`, in the output folder.
pub const TEST_EVALUATION_FILE: &str = "evaluation-test.json";

/// What to fine-tune, on what, and where the results go.
#[derive(Clone, Debug)]
pub struct Job {
    pub data: DataSource,
    pub head: HeadSource,
    /// The model spec (TOML).
    pub model: PathBuf,
    /// The output folder.
    pub out: PathBuf,
    pub config: FinetuneConfig,
    /// Intra-op threads (0: all cores).
    pub threads: usize,
    /// Model cache (default: the project cache).
    pub cache: Option<PathBuf>,
    /// Feature cache, for cached prefix activations (default: the features stage's).
    pub features_cache: Option<PathBuf>,
    /// Allows [`HeadSource::Random`] (which wrecks pretrained features).
    pub allow_random_head: bool,
    /// Deletes a previous run in the output folder instead of resuming it
    /// (or refusing it when its settings differ).
    pub restart: bool,
    /// Rows in the shuffle buffer of streamed images
    /// ([`crate::SHUFFLE_BUFFER_ROWS`] by default; see [`crate::stream`]).
    pub shuffle_buffer_rows: usize,
}

/// Where the examples come from.
#[derive(Clone, Debug, PartialEq)]
pub enum DataSource {
    /// An ingested dataset folder: its train, validation and test splits.
    Dataset(PathBuf),
    /// Seeded random images with labels `i % classes`, named `class0`...:
    /// training only, no augmentation, the whole graph trained.
    Random { examples: usize, classes: usize },
}

/// Where the head's starting weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadSource {
    /// The head stage's output folder (`head.json`, `head.safetensors`).
    Trained(PathBuf),
    /// Seeded random layers with these hidden sizes; refused unless
    /// [`Job::allow_random_head`].
    Random { hidden: Vec<usize>, seed: u64 },
}

/// What the caller is told while a job runs.
pub struct Hooks<'h> {
    /// Model download, prefix caching and each epoch's steps.
    pub progress: &'h dyn Progress,
    /// One line about what happens (the binary prints it to stderr).
    pub log: &'h dyn Fn(&str),
    /// After each epoch, once its checkpoint and state are on disk;
    /// `ControlFlow::Break` stops there as if interrupted.
    pub on_epoch: &'h mut dyn FnMut(&EpochRecord) -> ControlFlow<()>,
}

/// The examples, opened.
enum Examples {
    Dataset { dir: PathBuf, dataset: Dataset },
    Random { images: ArrayD<f32>, labels: Vec<i64> },
}

/// A job with its inputs read and its decisions made; [`Plan::run`] does the work.
pub struct Plan {
    job: Job,
    clock: Instant,
    spec: ModelSpec,
    examples: Examples,
    classes: Vec<String>,
    resolved: models::ResolvedModel,
    ort: &'static OrtTraining,
    composed: Composed,
    parameters: ParameterSplit,
    augment: Option<Augment>,
    mode: PrefixMode,
    /// Where the frozen prefix ends, with the parameters of the suffix;
    /// `None`: the whole graph trains.
    split: Option<(SplitGraph, ParameterSplit)>,
}

/// Reads the job's inputs, resolves the model, composes it with the head,
/// selects the trainable parameters and decides how the frozen prefix runs.
pub fn plan(job: Job, hooks: &mut Hooks<'_>) -> Result<Plan> {
    let clock = Instant::now();
    job.config.validate().map_err(FinetuneError::settings("fine-tuning settings"))?;
    let spec = read_spec(&job.model)?;
    let (examples, classes) = open_examples(&job.data, &spec)?;
    let cache = match &job.cache {
        Some(cache) => cache.clone(),
        None => runtime::cache_dir()?,
    };
    let resolved = models::resolve_with_progress(&spec, &cache, hooks.progress)?;
    (hooks.log)(&resolved.weights_note());
    let (head, activation) = head_init(&job.head, &classes)?;
    let (augment, mode) = prefix_mode(&job.config, &examples)?;

    let venv = runtime::ensure_training_venv()?;
    let ort = OrtTraining::init(&venv)?;
    let conv_base = onnx_graph::read_model(&resolved.conv_base)?;
    if conv_base.ir_version > MAX_TRAINING_IR_VERSION {
        return Err(SetupError::IrVersion { found: conv_base.ir_version, max: MAX_TRAINING_IR_VERSION }.into());
    }
    let options =
        ComposeOptions { allow_random_head: job.allow_random_head, activation, ..ComposeOptions::from_spec(&spec) };
    let mut composed = compose(&conv_base, &head, &options)?;
    let unfreeze: Unfreeze = job.config.unfreeze.parse()?;
    let parameters = select_parameters(&composed.training, &composed.head_params, &unfreeze, &spec.blocks)?;
    let parameters = apply_batch_norm(&composed.training, parameters, spec.fine_tune.batch_norm)?;
    // Before the training build sees it: it would switch these layers to batch statistics.
    let rewritten = onnx_graph::batch_norm::freeze_statistics(&mut composed.training)?;
    if rewritten > 0 {
        (hooks.log)(&format!(
            "batch normalisation: {rewritten} layers keep their running statistics ({:?})",
            spec.fine_tune.batch_norm
        ));
    }
    let split = frozen_split(mode, &spec, &composed, &parameters, hooks)?;
    let mode = if split.is_none() { PrefixMode::Full } else { mode };
    (hooks.log)(&format!(
        "fine-tuning {} tensors ({}; {} frozen), prefix mode {mode:?}{}",
        parameters.trainable.len(),
        job.config.unfreeze,
        parameters.frozen.len(),
        split.as_ref().map(|(s, _)| format!(", frozen prefix up to {}", s.tensor)).unwrap_or_default()
    ));
    Ok(Plan { job, clock, spec, examples, classes, resolved, ort, composed, parameters, augment, mode, split })
}

fn read_spec(path: &Path) -> Result<ModelSpec> {
    let text = std::fs::read_to_string(path).map_err(FinetuneError::io("cannot read", path))?;
    ModelSpec::from_toml(&text).map_err(|e| FinetuneError::Spec(e.in_file("model spec", path)))
}

/// The examples and the class names, in label order.
fn open_examples(data: &DataSource, spec: &ModelSpec) -> Result<(Examples, Vec<String>)> {
    match data {
        DataSource::Dataset(dir) => {
            let dataset = Dataset::open(dir)?;
            let classes = dataset.classes().to_vec();
            Ok((Examples::Dataset { dir: dir.clone(), dataset }, classes))
        }
        &DataSource::Random { examples, classes } => {
            let dims = imaging::preprocess::batch_shape(&spec.input, examples);
            let mut rng = train_kit::SplitMix64::new(2);
            let values = rng.uniform_vec(-2.0, 2.0, dims.iter().product());
            let images = ArrayD::from_shape_vec(IxDyn(&dims), values)
                .map_err(|source| crate::DataError::Shape { what: "random images", source })?;
            let labels = (0..examples).map(|i| (i % classes.max(1)) as i64).collect();
            let names = (0..classes).map(|i| format!("class{i}")).collect();
            Ok((Examples::Random { images, labels }, names))
        }
    }
}

/// The head's starting layers and the activation between them.
fn head_init(head: &HeadSource, classes: &[String]) -> Result<(HeadInit, Activation)> {
    match head {
        HeadSource::Trained(dir) => {
            let (layers, activation) = read_head(dir, classes)?;
            Ok((HeadInit::Trained(layers), activation))
        }
        HeadSource::Random { hidden, seed } => {
            Ok((HeadInit::Random { hidden: hidden.clone(), classes: classes.len(), seed: *seed }, Activation::Relu))
        }
    }
}

/// The head stage's weights as layers, checked against the dataset's classes.
fn read_head(dir: &Path, classes: &[String]) -> Result<(Vec<DenseLayer>, Activation)> {
    let (meta, layers) = contracts::head::read_head(dir)?;
    if meta.class_names != classes {
        return Err(HeadError::Classes {
            path: dir.join(contracts::head::META_FILE),
            head: meta.class_names,
            dataset: classes.to_vec(),
        }
        .into());
    }
    Ok((DenseLayer::from_head(&layers)?, meta.activation))
}

/// The augmentation, and how the frozen prefix runs: `auto` is cached
/// without augmentation, inference with it. Random data trains the whole
/// graph, unaugmented.
fn prefix_mode(config: &FinetuneConfig, examples: &Examples) -> Result<(Option<Augment>, PrefixMode)> {
    let augment = config.augment.then(Augment::default);
    if let Examples::Random { .. } = examples {
        return match (config.prefix, augment) {
            (_, Some(_)) => Err(SetupError::NeedsDataset { what: "augmentation".into() }.into()),
            (PrefixMode::Auto | PrefixMode::Full, None) => Ok((None, PrefixMode::Full)),
            (mode, None) => Err(SetupError::NeedsDataset { what: format!("prefix mode {mode:?}") }.into()),
        };
    }
    let mode = match (config.prefix, augment.is_some()) {
        (PrefixMode::Auto, true) => PrefixMode::Inference,
        (PrefixMode::Auto, false) => PrefixMode::Cached,
        (mode, _) => mode,
    };
    Ok((augment, mode))
}

/// The latest block boundary before every trainable layer, unless the
/// whole graph trains (`full`).
fn frozen_split(
    mode: PrefixMode,
    spec: &ModelSpec,
    composed: &Composed,
    parameters: &ParameterSplit,
    hooks: &Hooks<'_>,
) -> Result<Option<(SplitGraph, ParameterSplit)>> {
    if mode == PrefixMode::Full {
        return Ok(None);
    }
    let candidates = spec.blocks.values().map(|b| b.input.as_str());
    let found = crate::latest_frozen_split(&composed.training, candidates, parameters)?;
    if found.is_none() {
        (hooks.log)("no block boundary lies before every trainable layer: training the whole graph");
    }
    Ok(found)
}

/// The training settings a [`FinetuneConfig`] stands for; `source` says
/// what the batches are (part of the run's identity).
pub fn train_config(config: &FinetuneConfig, source: String) -> TrainConfig {
    TrainConfig {
        epochs: config.epochs,
        batch_size: config.batch_size,
        learning_rate: config.learning_rate,
        schedule: match config.warmup_steps {
            0 => Schedule::Constant,
            warmup_steps => Schedule::CosineSteps { warmup_steps, min_lr: config.learning_rate / 10.0 },
        },
        seed: config.seed,
        shuffle: true,
        patience: (config.patience > 0).then_some(config.patience),
        min_delta: 0.0,
        source,
    }
}

fn optimizer_kind(optimizer: Optimizer) -> OptimizerKind {
    match optimizer {
        Optimizer::Adamw => OptimizerKind::AdamW,
        Optimizer::Sgd => OptimizerKind::Sgd,
    }
}

/// The training examples and the validation ones (none when the split is empty).
#[allow(clippy::large_enum_variant)] // one value per run, moved once
enum Sources {
    Images { train: StreamedImages, validation: Option<StreamedImages> },
    Tensors { train: InMemory },
}

/// What training gave.
struct Trained {
    outcome: TrainOutcome,
    prefix_cache: Option<PrefixCacheStats>,
    seconds: f64,
}

impl Plan {
    /// Trains (or resumes), exports `model.onnx`, evaluates it and writes
    /// `finetune.json` (see the module doc); returns what it wrote there.
    pub fn run(self, hooks: &mut Hooks<'_>) -> Result<FinetuneSummary> {
        // One process at a time in an output folder: a second waits, then
        // resumes (or, finished, re-exports) what the first left.
        let _lock = atomic_file::Lock::exclusive_folder(&self.job.out, "the fine-tuning output folder")?;
        // Holding the folder alone: every temporary here is a dead process's.
        for stale in atomic_file::remove_stale_partials(&self.job.out, true) {
            (hooks.log)(&format!("removed {}, left by a process that stopped", stale.display()));
        }
        let (artifacts, artifacts_seconds) = self.artifacts(hooks)?;
        let config = self.train_config();
        let sources = self.sources()?;
        let trained = self.train(&artifacts, &config, sources, hooks)?;
        if trained.outcome.resumed_after_epoch > 0 {
            (hooks.log)(&format!("resumed after epoch {}", trained.outcome.resumed_after_epoch));
        }
        let started = Instant::now();
        let model_path = self.export(&artifacts, &trained.outcome.best_checkpoint)?;
        let export_seconds = started.elapsed().as_secs_f64();
        let test_accuracy = self.evaluate(&model_path, hooks)?;
        let summary =
            self.summary(&artifacts, artifacts_seconds, config, trained, export_seconds, test_accuracy, model_path);
        contracts::write(&self.job.out.join(SUMMARY_FILE), &summary)?;
        (hooks.log)(&format!(
            "fine-tuned in {:.1} s (best epoch {}, {:?}); model: {}{}",
            summary.total_seconds,
            summary.best_epoch,
            summary.stop,
            summary.model_onnx.display(),
            test_accuracy.map(|a| format!("; test accuracy {a:.4}")).unwrap_or_default()
        ));
        Ok(summary)
    }

    /// The graph that trains: the suffix after the frozen prefix, or the
    /// whole composed graph.
    fn trained_graph(&self) -> (&ModelProto, &ParameterSplit) {
        match &self.split {
            Some((split, restricted)) => (&split.suffix, restricted),
            None => (&self.composed.training, &self.parameters),
        }
    }

    /// The training artifacts (generated, or reused from an earlier run), and the seconds that took.
    fn artifacts(&self, hooks: &Hooks<'_>) -> Result<(Artifacts, f64)> {
        let started = Instant::now();
        let (model, split) = self.trained_graph();
        let optimizer = optimizer_kind(self.job.config.optimizer);
        let request = ArtifactRequest { model, split, loss: Loss::CrossEntropy, optimizer };
        let artifacts = ensure_artifacts(self.ort, &self.job.out.join("artifacts"), &request)?;
        let seconds = started.elapsed().as_secs_f64();
        (hooks.log)(&format!(
            "{} training artifacts in {seconds:.2} s: {}",
            if artifacts.generated { "generated" } else { "reused" },
            artifacts.dir.display()
        ));
        Ok((artifacts, seconds))
    }

    fn train_config(&self) -> TrainConfig {
        let source = (&self.augment, self.mode, self.split.as_ref().map(|(s, _)| &s.tensor));
        // Options, enums and strings: serialising them cannot fail. A
        // shuffle buffer other than the default orders large splits
        // otherwise, so it is part of the run (and kept out of the
        // default's text, which earlier runs recorded).
        let source = match self.job.shuffle_buffer_rows {
            crate::SHUFFLE_BUFFER_ROWS => serde_json::to_string(&source),
            rows => serde_json::to_string(&(source.0, source.1, source.2, rows)),
        };
        train_config(&self.job.config, source.unwrap_or_default())
    }

    fn sources(&self) -> Result<Sources> {
        match &self.examples {
            Examples::Dataset { dataset, .. } => {
                let augment = self.augment.map(|a| (a, self.job.config.seed));
                let rows = self.job.shuffle_buffer_rows;
                let train = StreamedImages::open(dataset, Split::Train, &self.spec, augment)?.with_buffer_rows(rows);
                let validation = match dataset.rows(Split::Validation) {
                    0 => None,
                    _ => {
                        Some(StreamedImages::open(dataset, Split::Validation, &self.spec, None)?.with_buffer_rows(rows))
                    }
                };
                Ok(Sources::Images { train, validation })
            }
            Examples::Random { images, labels } => {
                Ok(Sources::Tensors { train: InMemory::new(images.clone(), labels.clone())? })
            }
        }
    }

    /// Trains in the run folder (`--restart` empties it first), the frozen
    /// prefix run as the mode says.
    fn train(
        &self,
        artifacts: &Artifacts,
        config: &TrainConfig,
        sources: Sources,
        hooks: &mut Hooks<'_>,
    ) -> Result<Trained> {
        let run_dir = self.job.out.join("run");
        if self.job.restart && run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(FinetuneError::io("cannot remove", &run_dir))?;
        }
        let session = SessionConfig { threads: self.job.threads, deterministic: true };
        let run = RunOptions { artifacts, run_dir: &run_dir, config, session, progress: hooks.progress };
        let started = Instant::now();
        let (outcome, prefix_cache) = match (sources, &self.split) {
            (Sources::Tensors { mut train }, _) => {
                (crate::train(self.ort, &run, &mut train, None, hooks.on_epoch)?, None)
            }
            (Sources::Images { mut train, mut validation }, None) => {
                let validation = validation.as_mut().map(|v| v as &mut dyn BatchSource);
                (crate::train(self.ort, &run, &mut train, validation, hooks.on_epoch)?, None)
            }
            (Sources::Images { mut train, validation }, Some((split, _))) => {
                let (outcome, stats) = self.train_suffix(&run, split, &mut train, validation.is_some(), hooks)?;
                (outcome, Some(stats))
            }
        };
        Ok(Trained { outcome, prefix_cache, seconds: started.elapsed().as_secs_f64() })
    }

    /// Trains the suffix after the frozen prefix: on prefix activations
    /// computed once and kept in the feature cache (`cached`), or computed
    /// for every batch (`inference`, the images streamed). Validation
    /// activations are always cached; cached ones are computed from
    /// streamed images and read back from the cache per batch.
    fn train_suffix(
        &self,
        run: &RunOptions<'_>,
        split: &SplitGraph,
        train_images: &mut StreamedImages,
        validation: bool,
        hooks: &mut Hooks<'_>,
    ) -> Result<(TrainOutcome, PrefixCacheStats)> {
        let Examples::Dataset { dataset, .. } = &self.examples else {
            return Err(SetupError::NeedsDataset { what: format!("prefix mode {:?}", self.mode) }.into());
        };
        let features_cache = match &self.job.features_cache {
            Some(dir) => feature_cache::FeatureCache::open(dir)?,
            None => feature_cache::FeatureCache::open(&feature_cache::FeatureCache::default_root()?)?,
        };
        let preprocess_fingerprint = feature_cache::preprocess_fingerprint(dataset.info(), &self.spec);
        let key = crate::prefix_cache_key(&self.spec.name, &split.prefix, &preprocess_fingerprint)?;
        let store = features_cache.store(&key)?;
        let item_shape = crate::prefix_item_shape(&split.prefix)?;
        let mut runner = Inference::from_model(&split.prefix, self.job.threads)?;
        let mut stats = PrefixCacheStats::default();
        let (batch, progress) = (inference_batch(self.job.config.batch_size), hooks.progress);
        let preparer = ImageSource::new(Vec::new(), &self.spec, None)?;
        let mut cached = |split: Split, runner: &mut Inference| -> Result<StoredActivations<'_>> {
            let (activations, s) =
                crate::cached_activations(&store, dataset, split, &preparer, runner, &item_shape, batch, progress)?;
            stats = PrefixCacheStats {
                hits: stats.hits + s.hits,
                computed: stats.computed + s.computed,
                seconds: stats.seconds + s.seconds,
            };
            Ok(activations)
        };
        let mut validation = match validation {
            true => Some(cached(Split::Validation, &mut runner)?),
            false => None,
        };
        let validation = validation.as_mut().map(|v| v as &mut dyn BatchSource);
        let outcome = if self.mode == PrefixMode::Cached {
            let mut train = cached(Split::Train, &mut runner)?;
            (hooks.log)(&format!(
                "prefix activations: {} from the cache, {} computed ({:.1} s)",
                stats.hits, stats.computed, stats.seconds
            ));
            crate::train(self.ort, run, &mut train, validation, hooks.on_epoch)?
        } else {
            let mut train = PrefixSource { inner: train_images, runner: &mut runner };
            crate::train(self.ort, run, &mut train, validation, hooks.on_epoch)?
        };
        Ok((outcome, stats))
    }

    /// The best checkpoint as `model.onnx`: the whole network, softmax
    /// appended, preprocessing in the metadata.
    fn export(&self, artifacts: &Artifacts, checkpoint: &Path) -> Result<PathBuf> {
        let model_path = self.job.out.join("model.onnx");
        let stored = match &self.examples {
            Examples::Dataset { dataset, .. } => Some(dataset.info().spec.stored_image()),
            Examples::Random { .. } => None,
        };
        let metadata = crate::preprocessing_metadata(&self.spec, &self.classes, stored);
        match &self.split {
            None => crate::export_inference_model(self.ort, artifacts, checkpoint, &model_path, &metadata)?,
            Some(_) => crate::export_full_model(
                self.ort,
                artifacts,
                checkpoint,
                &self.composed.inference,
                &model_path,
                &metadata,
            )?,
        };
        Ok(model_path)
    }

    /// Runs `model.onnx` in ONNX Runtime 1.32: over the test split, written
    /// to `evaluation-test.json` (its accuracy returned; `None` when the
    /// split is empty), or, for random data, on the first images, checking
    /// that it gives probabilities.
    fn evaluate(&self, model: &Path, hooks: &Hooks<'_>) -> Result<Option<f64>> {
        let dataset = match &self.examples {
            Examples::Dataset { dataset, .. } => dataset,
            Examples::Random { images, .. } => {
                let sample = images.slice(ndarray::s![..images.shape()[0].min(2), .., .., ..]).to_owned().into_dyn();
                let probabilities = crate::verify_inference_model(model, sample)?;
                if let Some(first) = probabilities.outer_iter().next() {
                    (hooks.log)(&format!("probabilities of the first image: {first}"));
                }
                return Ok(None);
            }
        };
        if dataset.rows(Split::Test) == 0 {
            return Ok(None);
        }
        let images = StreamedImages::open(dataset, Split::Test, &self.spec, None)?;
        let mut inference = Inference::from_file(model, self.job.threads)?;
        let mut rows = Vec::new();
        let mut labels = Vec::new();
        let stored_order = EpochOrder { seed: 0, epoch: 0, shuffle: false };
        for batch in images.stream(stored_order, inference_batch(self.job.config.batch_size)) {
            let batch = batch?;
            let probabilities = inference.run(&batch.inputs)?;
            rows.extend(probabilities.iter().copied());
            labels.extend(batch.labels.iter().map(|&l| l as usize));
        }
        let probabilities = ndarray::Array2::from_shape_vec((labels.len(), self.classes.len()), rows)
            .map_err(|source| crate::DataError::Shape { what: "the test split's probabilities", source })?;
        let evaluation = train_kit::evaluate(probabilities.view(), &labels, &self.classes, &[1, 3]);
        contracts::write(&self.job.out.join(TEST_EVALUATION_FILE), &evaluation)?;
        Ok(Some(evaluation.accuracy))
    }

    #[allow(clippy::too_many_arguments)]
    fn summary(
        &self,
        artifacts: &Artifacts,
        artifacts_seconds: f64,
        config: TrainConfig,
        trained: Trained,
        export_seconds: f64,
        test_accuracy: Option<f64>,
        model_onnx: PathBuf,
    ) -> FinetuneSummary {
        let Trained { outcome, prefix_cache, seconds: train_seconds } = trained;
        let epochs_run: Vec<_> = outcome.state.history.iter().skip(outcome.resumed_after_epoch).collect();
        FinetuneSummary {
            dataset: match &self.examples {
                Examples::Dataset { dir, .. } => dir.clone(),
                Examples::Random { .. } => PathBuf::new(),
            },
            model: self.spec.name.clone(),
            pretrained: self.resolved.pretrained,
            weights_note: self.resolved.weights_note(),
            head: match &self.job.head {
                HeadSource::Trained(dir) => Some(dir.clone()),
                HeadSource::Random { .. } => None,
            },
            unfreeze: self.job.config.unfreeze.clone(),
            trainable_parameters: self.parameters.trainable.clone(),
            augment: self.augment,
            prefix_mode: self.mode,
            split_at: self.split.as_ref().map(|(s, _)| s.tensor.clone()),
            config,
            artifacts: artifacts.dir.clone(),
            artifacts_generated: artifacts.generated,
            artifacts_seconds,
            prefix_cache,
            resumed_after_epoch: outcome.resumed_after_epoch,
            completed_epochs: outcome.state.completed_epochs,
            stop: outcome.stop.clone(),
            best_epoch: outcome.state.best.as_ref().map(|b| b.epoch).unwrap_or(0),
            train_seconds,
            train_images_per_second: (!epochs_run.is_empty())
                .then(|| epochs_run.iter().map(|r| r.train_examples_per_second).sum::<f64>() / epochs_run.len() as f64),
            export_seconds,
            test_accuracy,
            model_onnx,
            peak_rss_mb: peak_rss_mb(),
            total_seconds: self.clock.elapsed().as_secs_f64(),
        }
    }
}

/// Batches for inference-only passes (prefix caching, test evaluation):
/// small, because ONNX Runtime's arena keeps its high-water mark (a batch of
/// 32 VGG16 images needs over 1 GB of activations) while speed barely
/// changes above 8 (see the features benchmark).
fn inference_batch(training_batch: usize) -> usize {
    training_batch.clamp(1, 8)
}

/// This process's peak resident memory (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> Option<f64> {
    progress::peak_resident_kib().map(|kib| kib as f64 / 1024.0)
}
