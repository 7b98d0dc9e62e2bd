//! `finetune`: the thin binary over the library ([`finetune::stage`]).
//!
//! `finetune train` is the real batch step: dataset + model spec + head
//! weights → fine-tuned `model.onnx`. Its settings are
//! `contracts::finetune::FinetuneConfig` (from `--config`, else its
//! defaults), single flags override them.
//!
//! `finetune smoke` runs the same path on random data for a model spec: a
//! seeded random head (only with `--allow-random-head`), random images, a
//! few epochs, `model.onnx` run in ONNX Runtime 1.32. It checks an
//! installation and times the steps; it trains nothing useful.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use contracts::finetune::{FinetuneConfig, Optimizer, PrefixMode};
use finetune::{DataSource, EpochRecord, FinetuneError, HeadSource, Hooks, Job};

#[derive(Parser)]
#[command(name = "finetune", about = "Fine-tune a conv base and its head with ONNX Runtime's training API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fine-tune on an ingested dataset, starting from the head stage's weights.
    Train(TrainArgs),
    /// Run the whole path on random data (a check and a benchmark, not training).
    Smoke(SmokeArgs),
}

#[derive(Parser)]
struct TrainArgs {
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
    /// Fine-tuning settings (TOML, the fields of an experiment's `[finetune]` table); the flags
    /// below override single fields. Without it, the defaults of `contracts::finetune::FinetuneConfig`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// What of the conv base trains: block5, block4,block5, last:N, names:a,b, none. The head always trains.
    #[arg(long)]
    unfreeze: Option<String>,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    batch_size: Option<usize>,
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Steps of linear warm-up, then a cosine decay to a tenth of the rate; 0 keeps the rate constant.
    #[arg(long)]
    warmup_steps: Option<usize>,
    #[arg(long)]
    optimizer: Option<Optimizer>,
    /// Epochs without validation improvement before stopping (0: never stop early).
    #[arg(long)]
    patience: Option<usize>,
    #[arg(long)]
    seed: Option<u64>,
    /// Turn augmentation (random resized crop, horizontal flip) off.
    #[arg(long)]
    no_augment: bool,
    /// How the frozen prefix runs: `auto` (cached without augmentation, inference with it),
    /// `full` (inside the training graph), `inference` (every step, as plain inference),
    /// `cached` (once, stored in the feature cache; needs --no-augment).
    #[arg(long)]
    prefix: Option<PrefixMode>,
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
    /// Rows the shuffle buffer of streamed training images holds (memory
    /// against randomness; see the README).
    #[arg(long, default_value_t = finetune::SHUFFLE_BUFFER_ROWS)]
    shuffle_buffer: usize,
}

#[derive(Parser)]
struct SmokeArgs {
    /// The model spec (TOML), e.g. data-specs/models/tiny-vgg.toml.
    #[arg(long)]
    model_spec: PathBuf,
    /// Where outputs go (artifacts/, run/, model.onnx, finetune.json).
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
    #[arg(long, default_value = "adamw")]
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

fn main() -> anyhow::Result<()> {
    let result = match Cli::parse().command {
        Command::Train(args) => train(args),
        Command::Smoke(args) => smoke(args),
    };
    if result.is_ok() {
        progress::report_peak();
    }
    result
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let config = settings(&args)?;
    let head = match (args.head, args.allow_random_head) {
        (Some(dir), _) => HeadSource::Trained(dir),
        (None, true) => HeadSource::Random { hidden: vec![1024], seed: config.seed },
        (None, false) => return Err(FinetuneError::NoHead.into()),
    };
    let job = Job {
        data: DataSource::Dataset(args.dataset),
        head,
        model: args.model,
        out: args.out,
        config,
        threads: args.threads,
        cache: args.cache,
        features_cache: args.features_cache,
        allow_random_head: args.allow_random_head,
        restart: args.restart,
        shuffle_buffer_rows: args.shuffle_buffer,
    };
    let bar = progress::Terminal::new();
    let mut on_epoch = |record: &EpochRecord| {
        eprintln!(
            "epoch {}/{}  loss {:.4}  acc {:.4}{}  {:.1} images/s ({:.0}% of it getting batches)",
            record.epoch,
            record.epochs,
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
    let mut hooks = Hooks { progress: &bar, log: &|line| eprintln!("{line}"), on_epoch: &mut on_epoch };
    finetune::plan(job, &mut hooks)?.run(&mut hooks)?;
    Ok(())
}

/// The settings: `--config` (or the defaults), then the flags that override single fields.
fn settings(args: &TrainArgs) -> anyhow::Result<FinetuneConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
            spec::parse_toml::<FinetuneConfig>(&text).map_err(|e| e.in_file("fine-tuning settings", path))?
        }
        None => FinetuneConfig::default(),
    };
    config.unfreeze = args.unfreeze.clone().unwrap_or(config.unfreeze);
    config.epochs = args.epochs.unwrap_or(config.epochs);
    config.batch_size = args.batch_size.unwrap_or(config.batch_size);
    config.learning_rate = args.learning_rate.unwrap_or(config.learning_rate);
    config.warmup_steps = args.warmup_steps.unwrap_or(config.warmup_steps);
    config.optimizer = args.optimizer.unwrap_or(config.optimizer);
    config.patience = args.patience.unwrap_or(config.patience);
    config.seed = args.seed.unwrap_or(config.seed);
    config.augment &= !args.no_augment;
    config.prefix = args.prefix.unwrap_or(config.prefix);
    Ok(config)
}

fn smoke(args: SmokeArgs) -> anyhow::Result<()> {
    let config = FinetuneConfig {
        unfreeze: args.unfreeze,
        epochs: args.epochs,
        batch_size: args.batch_size,
        learning_rate: args.learning_rate,
        warmup_steps: 1,
        optimizer: args.optimizer,
        patience: 0,
        augment: false,
        prefix: PrefixMode::Full,
        seed: 0,
    };
    let job = Job {
        data: DataSource::Random { examples: args.examples, classes: args.classes },
        head: HeadSource::Random { hidden: args.hidden, seed: 1 },
        model: args.model_spec,
        out: args.out,
        config,
        threads: args.threads,
        cache: args.cache,
        features_cache: None,
        allow_random_head: args.allow_random_head,
        restart: false,
        shuffle_buffer_rows: finetune::SHUFFLE_BUFFER_ROWS,
    };
    let mut on_epoch = |record: &EpochRecord| {
        match serde_json::to_string(record) {
            Ok(line) => println!("{line}"),
            Err(e) => eprintln!("epoch {}: {e}", record.epoch),
        }
        ControlFlow::Continue(())
    };
    let mut hooks = Hooks { progress: &progress::Silent, log: &|line| eprintln!("{line}"), on_epoch: &mut on_epoch };
    let started = Instant::now();
    let plan = finetune::plan(job, &mut hooks)?;
    eprintln!("resolve, set up the embedded Python, compose: {:.2} s", started.elapsed().as_secs_f64());
    let summary = plan.run(&mut hooks)?;
    let lap = |what: String, seconds: f64| eprintln!("{what}: {seconds:.2} s");
    let artifacts = if summary.artifacts_generated { "generate artifacts" } else { "reuse artifacts" };
    lap(artifacts.into(), summary.artifacts_seconds);
    lap(format!("train ({} epochs of {} examples)", summary.completed_epochs, args.examples), summary.train_seconds);
    lap("export".into(), summary.export_seconds);
    lap("total".into(), summary.total_seconds);
    Ok(())
}
