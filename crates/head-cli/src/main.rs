//! `head`: train, evaluate and predict with the classifier head, as a batch
//! step; the work is the `head_cli` library's.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use dataset::Split;

#[derive(Parser)]
#[command(name = "head", version, about = "Train, evaluate and predict with a classifier head on cached embeddings")]
struct Cli {
    /// Worker threads (default: all cores). Results do not depend on it.
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// The stage's memory budget for embeddings: a split whose embeddings
    /// (rows × embedding length × 4 bytes) exceed it is streamed from the
    /// cache one batch at a time instead of loaded. Results do not depend
    /// on it.
    #[arg(long, global = true, default_value_t = 4096)]
    memory_budget_mb: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train on the train split (validation split for early stopping) and
    /// write the head, its metrics log, its ONNX graph, test metrics, and
    /// `model.onnx` (conv base + head: image in, probabilities out).
    Train {
        /// Folder holding the features stage's `features.json`.
        #[arg(long)]
        features: PathBuf,
        /// Output folder.
        #[arg(long)]
        out: PathBuf,
        /// Head settings (TOML, the `[head]` fields); flags override.
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        epochs: Option<usize>,
        #[arg(long)]
        batch_size: Option<usize>,
        /// Hidden layer widths, comma-separated; empty for logistic regression.
        #[arg(long, value_delimiter = ',', num_args = 0..)]
        hidden: Option<Vec<usize>>,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Metrics of a trained head on one split, as a table and JSON.
    Evaluate {
        #[command(flatten)]
        on: OnSplit,
        #[arg(long, value_delimiter = ',', default_value = "1,3")]
        top_k: Vec<usize>,
        /// Write the evaluation as JSON here.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Top-k classes with probabilities for every row of a split, as CSV.
    Predict {
        #[command(flatten)]
        on: OnSplit,
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        /// CSV output (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// A trained head and the split of a features stage's output it runs on.
#[derive(Args)]
struct OnSplit {
    /// Folder holding the trained head.
    #[arg(long)]
    head: PathBuf,
    /// Folder holding the features stage's `features.json`.
    #[arg(long)]
    features: PathBuf,
    #[arg(long, default_value = "test")]
    split: Split,
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => {
            progress::report_peak();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    let memory_budget = cli.memory_budget_mb.saturating_mul(1 << 20);
    match cli.command {
        Command::Train { features, out, config, epochs, batch_size, hidden, seed } => {
            let mut config = head_cli::read_config(config.as_deref())?;
            config.epochs = epochs.unwrap_or(config.epochs);
            config.batch_size = batch_size.unwrap_or(config.batch_size);
            config.hidden = hidden.unwrap_or(config.hidden);
            config.seed = seed.unwrap_or(config.seed);
            head_cli::train(&features, &out, &config, memory_budget)
        }
        Command::Evaluate { on, top_k, out } => {
            head_cli::evaluate(&on.head, &on.features, on.split, &top_k, out.as_deref(), memory_budget)
        }
        Command::Predict { on, top_k, out } => {
            head_cli::predict(&on.head, &on.features, on.split, top_k, out.as_deref(), memory_budget)
        }
    }
}
