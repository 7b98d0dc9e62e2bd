//! `finetune`: the thin binary over the library.
//!
//! `finetune smoke` runs the whole path on random data for a model spec:
//! resolve the conv base, compose it with a seeded random head (only with
//! `--allow-random-head`), generate the training artifacts, train a few
//! epochs, export `model.onnx` and run it in ONNX Runtime 1.32. It checks an
//! installation and times the steps; it trains nothing useful.
//!
//! `finetune train` is the real batch step: dataset + model spec + head
//! weights → fine-tuned `model.onnx` (see `train_command.rs`).

mod train_command;

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use finetune::artifacts::{ensure_artifacts, ArtifactRequest};
use finetune::{
    compose, select_parameters, ComposeOptions, HeadInit, InMemory, Loss, OptimizerKind, OrtTraining, RunOptions,
    Schedule, SessionConfig, TrainConfig, Unfreeze,
};
use ndarray::{ArrayD, IxDyn};

#[derive(Parser)]
#[command(name = "finetune", about = "Fine-tune a conv base and its head with ONNX Runtime's training API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune on an ingested dataset, starting from the head stage's weights.
    Train(train_command::TrainArgs),
    /// Run the whole path on random data (a check and a benchmark, not training).
    Smoke(Smoke),
}

#[derive(Parser)]
struct Smoke {
    /// The model spec (TOML), e.g. data-specs/models/tiny-vgg.toml.
    #[arg(long)]
    model_spec: PathBuf,
    /// Where outputs go (artifacts/, run/, model.onnx).
    #[arg(long)]
    out: PathBuf,
    /// Model cache folder (default: the project cache).
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Required: the head is random here, which real fine-tuning must not start from.
    #[arg(long)]
    allow_random_head: bool,
    /// Hidden layer sizes of the random head.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    hidden: Vec<usize>,
    #[arg(long, default_value_t = 5)]
    classes: usize,
    /// What of the conv base trains: none, block5, block4,block5, last:N, names:a,b.
    #[arg(long, default_value = "block5")]
    unfreeze: String,
    #[arg(long, value_enum, default_value = "adamw")]
    optimizer: Optimizer,
    #[arg(long, default_value_t = 8)]
    examples: usize,
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    #[arg(long, default_value_t = 1e-4)]
    learning_rate: f64,
    /// Intra-op threads (0: all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Optimizer {
    Adamw,
    Sgd,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Train(args) => train_command::run(args),
        Command::Smoke(args) => smoke(args),
    }
}

fn smoke(args: Smoke) -> anyhow::Result<()> {
    let clock = Instant::now();
    let lap = |what: &str, since: Instant| eprintln!("{what}: {:.2} s", since.elapsed().as_secs_f64());

    let text = std::fs::read_to_string(&args.model_spec)
        .with_context(|| format!("cannot read {}", args.model_spec.display()))?;
    let spec = spec::ModelSpec::from_toml(&text)?;
    let cache = match args.cache {
        Some(cache) => cache,
        None => runtime::cache_dir()?,
    };
    let started = Instant::now();
    let resolved = models::resolve(&spec, &cache)?;
    eprintln!("{}", resolved.weights_note());
    lap("resolve the conv base", started);

    let started = Instant::now();
    let venv = runtime::ensure_training_venv()?;
    let ort = OrtTraining::init(&venv)?;
    lap("set up the embedded Python", started);

    let started = Instant::now();
    let conv_base = onnx_graph::read_model(&resolved.conv_base)?;
    let options = ComposeOptions { allow_random_head: args.allow_random_head, ..ComposeOptions::from_spec(&spec) };
    let head = HeadInit::Random { hidden: args.hidden.clone(), classes: args.classes, seed: 1 };
    let composed = compose(&conv_base, &head, &options)?;
    let unfreeze: Unfreeze = args.unfreeze.parse()?;
    let split = select_parameters(&composed.training, &composed.head_params, &unfreeze, &spec.blocks)?;
    lap("compose", started);
    eprintln!("trainable: {} tensors, frozen: {}", split.trainable.len(), split.frozen.len());

    let started = Instant::now();
    let optimizer = match args.optimizer {
        Optimizer::Adamw => OptimizerKind::AdamW,
        Optimizer::Sgd => OptimizerKind::Sgd,
    };
    let request = ArtifactRequest { model: &composed.training, split: &split, loss: Loss::CrossEntropy, optimizer };
    let artifacts = ensure_artifacts(ort, &args.out.join("artifacts"), &request)?;
    lap(if artifacts.generated { "generate artifacts" } else { "reuse artifacts" }, started);
    eprintln!("artifacts: {}", artifacts.dir.display());

    let [width, height] = spec.input.size.map(|s| s as usize);
    let dims = match spec.input.layout {
        spec::Layout::Nchw => [args.examples, 3, height, width],
        spec::Layout::Nhwc => [args.examples, height, width, 3],
    };
    let mut rng = train_kit::SplitMix64::new(2);
    let count = dims.iter().product();
    let images = ArrayD::from_shape_vec(IxDyn(&dims), rng.uniform_vec(-2.0, 2.0, count))?;
    let labels = (0..args.examples).map(|i| (i % args.classes) as i64).collect();
    let mut train = InMemory::new(images.clone(), labels)?;

    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        schedule: Schedule::CosineSteps { warmup_steps: 1, min_lr: args.learning_rate / 10.0 },
        patience: None,
        ..TrainConfig::default()
    };
    let run_dir = args.out.join("run");
    let run = RunOptions {
        artifacts: &artifacts,
        run_dir: &run_dir,
        config: &config,
        session: SessionConfig { threads: args.threads, deterministic: true },
        progress: &progress::Silent,
    };
    let started = Instant::now();
    let outcome = finetune::train(ort, &run, &mut train, None, &mut |record| {
        println!("{}", serde_json::to_string(record).expect("records serialise"));
        ControlFlow::Continue(())
    })?;
    lap(&format!("train ({} epochs of {} examples)", outcome.state.completed_epochs, args.examples), started);

    let started = Instant::now();
    let model_path = args.out.join("model.onnx");
    let classes: Vec<String> = (0..args.classes).map(|i| format!("class{i}")).collect();
    let metadata = finetune::preprocessing_metadata(&spec, &classes, None);
    finetune::export_inference_model(ort, &artifacts, &outcome.best_checkpoint, &model_path, &metadata)?;
    lap("export", started);
    let started = Instant::now();
    let sample = images.slice(ndarray::s![..args.examples.min(2), .., .., ..]).to_owned().into_dyn();
    let probabilities = finetune::verify_inference_model(&model_path, sample)?;
    lap("run model.onnx in ONNX Runtime 1.32", started);
    eprintln!("probabilities of the first image: {}", probabilities.row(0));
    lap("total", clock);
    Ok(())
}
