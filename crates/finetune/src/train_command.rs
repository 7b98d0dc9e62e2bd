//! `finetune train`: the batch step over files. Reads an ingested dataset,
//! a model spec and the head stage's weights; writes into `--out`:
//!
//! - `artifacts/artifacts-<fingerprint>/`: training artifacts (reused);
//! - `run/`: `state.json`, `metrics.jsonl`, `checkpoints/` (resumable);
//! - `model.onnx`: image in, probabilities out (the full network);
//! - `evaluation-test.json`: test-split metrics of `model.onnx` in ONNX
//!   Runtime 1.32 (the head stage's format);
//! - `finetune.json`: what ran, how fast, and where things are.
//!
//! Running the same command again resumes an interrupted run, or (when it
//! finished) re-exports and re-evaluates without training.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use contracts::finetune::{FinetuneSummary, Optimizer, PrefixMode, SUMMARY_FILE};
use dataset::{Dataset, Split};
use finetune::artifacts::{ensure_artifacts, ArtifactRequest};
use finetune::{
    compose, select_parameters, Augment, BatchSource, ComposeOptions, DenseLayer, HeadInit, ImageSource, Inference,
    Loss, OptimizerKind, OrtTraining, PrefixCacheStats, PrefixSource, RunOptions, Schedule, SessionConfig, TrainConfig,
    Unfreeze,
};

#[derive(clap::Parser)]
pub struct TrainArgs {
    /// An ingested dataset folder (the ingest stage's output).
    #[arg(long)]
    dataset: PathBuf,
    /// The head stage's output folder (head.safetensors + head.json).
    #[arg(long)]
    head: Option<PathBuf>,
    /// The model spec (TOML) the features stage used.
    #[arg(long)]
    model: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// What of the conv base trains: block5, block4,block5, last:N, names:a,b, none. The head always trains.
    #[arg(long, default_value = "block5")]
    unfreeze: String,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    #[arg(long, default_value_t = 1e-5)]
    learning_rate: f64,
    /// Steps of linear warm-up, then a cosine decay to a tenth of the rate; 0 keeps the rate constant.
    #[arg(long, default_value_t = 0)]
    warmup_steps: usize,
    #[arg(long, default_value = "adamw")]
    optimizer: Optimizer,
    /// Epochs without validation improvement before stopping (0: never stop early).
    #[arg(long, default_value_t = 3)]
    patience: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Turn augmentation (random resized crop, horizontal flip) off.
    #[arg(long)]
    no_augment: bool,
    /// How the frozen prefix runs: `auto` (cached without augmentation, inference with it),
    /// `full` (inside the training graph), `inference` (every step, as plain inference),
    /// `cached` (once, stored in the feature cache; needs --no-augment).
    #[arg(long, default_value = "auto")]
    prefix: PrefixMode,
    /// Intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Model cache (default: the project cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Feature cache, for cached prefix activations (default: the features stage's).
    #[arg(long)]
    features_cache: Option<PathBuf>,
    /// Start from a seeded random head instead of --head (wrecks pretrained features; for checks only).
    #[arg(long)]
    allow_random_head: bool,
    /// Delete a previous run in --out that was made with other settings, instead of refusing.
    #[arg(long)]
    restart: bool,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let clock = Instant::now();
    let spec_text =
        std::fs::read_to_string(&args.model).with_context(|| format!("cannot read {}", args.model.display()))?;
    let spec = spec::ModelSpec::from_toml(&spec_text).with_context(|| format!("{}", args.model.display()))?;
    let dataset = Dataset::open(&args.dataset)?;
    let classes = dataset.classes().to_vec();
    let cache = match &args.cache {
        Some(cache) => cache.clone(),
        None => runtime::cache_dir()?,
    };
    let resolved = models::resolve_with_progress(&spec, &cache, &progress::Terminal::new())?;
    eprintln!("{}", resolved.weights_note());

    let head = match (&args.head, args.allow_random_head) {
        (Some(dir), _) => HeadInit::Trained(read_head(dir, &classes)?),
        (None, true) => HeadInit::Random { hidden: vec![1024], classes: classes.len(), seed: args.seed },
        (None, false) => bail!("--head is needed: the head stage's output folder (or --allow-random-head)"),
    };
    let augment = (!args.no_augment).then(Augment::default);
    let mode = match (args.prefix, augment.is_some()) {
        (PrefixMode::Auto, true) => PrefixMode::Inference,
        (PrefixMode::Auto, false) => PrefixMode::Cached,
        (PrefixMode::Cached, true) => {
            bail!("--prefix cached needs --no-augment: augmented images change the prefix's output every epoch")
        }
        (mode, _) => mode,
    };

    let venv = runtime::ensure_training_venv()?;
    let ort = OrtTraining::init(&venv)?;
    let conv_base = onnx_graph::read_model(&resolved.conv_base)?;
    let options = ComposeOptions { allow_random_head: args.allow_random_head, ..ComposeOptions::from_spec(&spec) };
    let composed = compose(&conv_base, &head, &options)?;
    let unfreeze: Unfreeze = args.unfreeze.parse()?;
    let parameters = select_parameters(&composed.training, &composed.head_params, &unfreeze, &spec.blocks)?;
    let split = match mode {
        PrefixMode::Full => None,
        _ => {
            let candidates = spec.blocks.values().map(|b| b.input.as_str());
            let found = finetune::latest_frozen_split(&composed.training, candidates, &parameters)?;
            if found.is_none() {
                eprintln!("no block boundary lies before every trainable layer: training the whole graph");
            }
            found
        }
    };
    let mode = if split.is_none() { PrefixMode::Full } else { mode };
    eprintln!(
        "fine-tuning {} tensors ({}), prefix mode {mode:?}{}",
        parameters.trainable.len(),
        args.unfreeze,
        split.as_ref().map(|(s, _)| format!(", frozen prefix up to {}", s.tensor)).unwrap_or_default()
    );

    let started = Instant::now();
    let (graph, graph_parameters) = match &split {
        Some((split, restricted)) => (&split.suffix, restricted),
        None => (&composed.training, &parameters),
    };
    let optimizer = match args.optimizer {
        Optimizer::Adamw => OptimizerKind::AdamW,
        Optimizer::Sgd => OptimizerKind::Sgd,
    };
    let request = ArtifactRequest { model: graph, split: graph_parameters, loss: Loss::CrossEntropy, optimizer };
    let artifacts = ensure_artifacts(ort, &args.out.join("artifacts"), &request)?;
    let artifacts_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "{} training artifacts in {artifacts_seconds:.2} s: {}",
        if artifacts.generated { "generated" } else { "reused" },
        artifacts.dir.display()
    );

    let mut train_images = ImageSource::from_dataset(&dataset, Split::Train, &spec, augment.map(|a| (a, args.seed)))?;
    let validation_images = match dataset.rows(Split::Validation) {
        0 => None,
        _ => Some(ImageSource::from_dataset(&dataset, Split::Validation, &spec, None)?),
    };
    let session = SessionConfig { threads: args.threads, deterministic: true };
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        schedule: match args.warmup_steps {
            0 => Schedule::Constant,
            warmup_steps => Schedule::CosineSteps { warmup_steps, min_lr: args.learning_rate / 10.0 },
        },
        seed: args.seed,
        shuffle: true,
        patience: (args.patience > 0).then_some(args.patience),
        min_delta: 0.0,
        source: serde_json::to_string(&(&augment, mode, split.as_ref().map(|(s, _)| &s.tensor)))?,
    };
    let run_dir = args.out.join("run");
    if args.restart && run_dir.exists() {
        std::fs::remove_dir_all(&run_dir).with_context(|| format!("cannot remove {}", run_dir.display()))?;
    }
    let bar = progress::Terminal::new();
    let run = RunOptions { artifacts: &artifacts, run_dir: &run_dir, config: &config, session, progress: &bar };
    let mut on_epoch = |record: &finetune::EpochRecord| {
        eprintln!(
            "epoch {}/{}  loss {:.4}  acc {:.4}{}  {:.1} images/s ({:.0}% of it getting batches)",
            record.epoch,
            config.epochs,
            record.train_loss,
            record.train_accuracy,
            match (record.val_loss, record.val_accuracy) {
                (Some(l), Some(a)) => format!("  val_loss {l:.4}  val_acc {a:.4}"),
                _ => String::new(),
            },
            record.train_examples_per_second,
            100.0 * record.input_seconds / record.seconds.max(1e-9)
        );
        ControlFlow::Continue(())
    };

    let started = Instant::now();
    let mut prefix_cache = None;
    let outcome = match (&split, mode) {
        (None, _) => {
            let mut validation = validation_images;
            finetune::train(
                ort,
                &run,
                &mut train_images,
                validation.as_mut().map(|v| v as &mut dyn BatchSource),
                &mut on_epoch,
            )?
        }
        (Some((split, _)), mode) => {
            let features_cache = match &args.features_cache {
                Some(dir) => feature_cache::FeatureCache::open(dir)?,
                None => feature_cache::FeatureCache::open(&feature_cache::FeatureCache::default_root()?)?,
            };
            let preprocess_fingerprint = feature_cache::preprocess_fingerprint(dataset.info(), &spec);
            let key = finetune::prefix_cache_key(&spec.name, &split.prefix, &preprocess_fingerprint)?;
            let store = features_cache.store(&key)?;
            let item_shape = finetune::prefix_item_shape(&split.prefix)?;
            let mut runner = Inference::from_model(&split.prefix, args.threads)?;
            let mut stats = PrefixCacheStats::default();
            let mut cached = |source: &ImageSource, runner: &mut Inference| -> anyhow::Result<finetune::InMemory> {
                let (activations, s) = finetune::cached_activations(
                    &store,
                    source,
                    runner,
                    &item_shape,
                    inference_batch(args.batch_size),
                    &bar,
                )?;
                stats = PrefixCacheStats {
                    hits: stats.hits + s.hits,
                    computed: stats.computed + s.computed,
                    seconds: stats.seconds + s.seconds,
                };
                Ok(activations)
            };
            let mut validation = match &validation_images {
                Some(images) => Some(cached(images, &mut runner)?),
                None => None,
            };
            let validation = validation.as_mut().map(|v| v as &mut dyn BatchSource);
            let outcome = if mode == PrefixMode::Cached {
                let mut train = cached(&train_images, &mut runner)?;
                eprintln!(
                    "prefix activations: {} from the cache, {} computed ({:.1} s)",
                    stats.hits, stats.computed, stats.seconds
                );
                finetune::train(ort, &run, &mut train, validation, &mut on_epoch)?
            } else {
                let mut train = PrefixSource { inner: &mut train_images, runner: &mut runner };
                finetune::train(ort, &run, &mut train, validation, &mut on_epoch)?
            };
            prefix_cache = Some(stats);
            outcome
        }
    };
    let train_seconds = started.elapsed().as_secs_f64();
    if outcome.resumed_after_epoch > 0 {
        eprintln!("resumed after epoch {}", outcome.resumed_after_epoch);
    }

    let started = Instant::now();
    let model_path = args.out.join("model.onnx");
    let metadata = finetune::preprocessing_metadata(
        &spec,
        &classes,
        Some(spec::StoredImage { size: dataset.info().spec.size, filter: dataset.info().spec.filter }),
    );
    match &split {
        None => finetune::export_inference_model(ort, &artifacts, &outcome.best_checkpoint, &model_path, &metadata)?,
        Some(_) => finetune::export_full_model(
            ort,
            &artifacts,
            &outcome.best_checkpoint,
            &composed.inference,
            &model_path,
            &metadata,
        )?,
    };
    let export_seconds = started.elapsed().as_secs_f64();
    let test_accuracy = evaluate_test(&dataset, &spec, &model_path, &args, &classes)?;

    let best = outcome.state.best.as_ref().map(|b| b.epoch).unwrap_or(0);
    let trained: Vec<_> = outcome.state.history.iter().skip(outcome.resumed_after_epoch).collect();
    let summary = FinetuneSummary {
        dataset: args.dataset.clone(),
        model: spec.name.clone(),
        pretrained: resolved.pretrained,
        weights_note: resolved.weights_note(),
        head: args.head.clone(),
        unfreeze: args.unfreeze.clone(),
        trainable_parameters: parameters.trainable.clone(),
        augment,
        prefix_mode: mode,
        split_at: split.as_ref().map(|(s, _)| s.tensor.clone()),
        config,
        artifacts: artifacts.dir.clone(),
        artifacts_generated: artifacts.generated,
        artifacts_seconds,
        prefix_cache,
        resumed_after_epoch: outcome.resumed_after_epoch,
        completed_epochs: outcome.state.completed_epochs,
        stop: outcome.stop.clone(),
        best_epoch: best,
        train_seconds,
        train_images_per_second: (!trained.is_empty())
            .then(|| trained.iter().map(|r| r.train_examples_per_second).sum::<f64>() / trained.len() as f64),
        export_seconds,
        test_accuracy,
        model_onnx: model_path.clone(),
        peak_rss_mb: peak_rss_mb(),
        total_seconds: clock.elapsed().as_secs_f64(),
    };
    contracts::write(&args.out.join(SUMMARY_FILE), &summary)?;
    eprintln!(
        "fine-tuned in {:.1} s (best epoch {best}, {:?}); model: {}{}",
        summary.total_seconds,
        summary.stop,
        model_path.display(),
        test_accuracy.map(|a| format!("; test accuracy {a:.4}")).unwrap_or_default()
    );
    Ok(())
}

/// The head stage's weights as layers, checked against the dataset's classes.
fn read_head(dir: &Path, classes: &[String]) -> anyhow::Result<Vec<DenseLayer>> {
    let (meta, layers) = contracts::head::read_head(dir)?;
    if meta.class_names != classes {
        bail!(
            "{}: the head was trained for classes {:?}, the dataset has {:?}",
            dir.join(contracts::head::META_FILE).display(),
            meta.class_names,
            classes
        );
    }
    layers
        .into_iter()
        .map(|l| DenseLayer::from_out_in(&l.weight, l.outputs, l.inputs, l.bias).map_err(anyhow::Error::from))
        .collect()
}

/// Runs `model.onnx` over the test split in ONNX Runtime 1.32 and writes
/// `evaluation-test.json`. `None` when the split is empty.
fn evaluate_test(
    dataset: &Dataset,
    spec: &spec::ModelSpec,
    model: &Path,
    args: &TrainArgs,
    classes: &[String],
) -> anyhow::Result<Option<f64>> {
    if dataset.rows(Split::Test) == 0 {
        return Ok(None);
    }
    let mut images = ImageSource::from_dataset(dataset, Split::Test, spec, None)?;
    let mut inference = Inference::from_file(model, args.threads)?;
    let indices: Vec<usize> = (0..images.len()).collect();
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for chunk in indices.chunks(inference_batch(args.batch_size)) {
        let batch = images.batch(chunk, 0)?;
        let probabilities = inference.run(&batch.inputs)?;
        rows.extend(probabilities.iter().copied());
        labels.extend(batch.labels.iter().map(|&l| l as usize));
    }
    let probabilities = ndarray::Array2::from_shape_vec((labels.len(), classes.len()), rows)?;
    let evaluation = train_kit::evaluate(probabilities.view(), &labels, classes, &[1, 3]);
    contracts::write(&args.out.join("evaluation-test.json"), &evaluation)?;
    Ok(Some(evaluation.accuracy))
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
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
