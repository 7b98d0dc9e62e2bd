//! `cargo xtask pipeline`: runs each stage's binary as a batch step, with
//! files between them: ingest → features → head. (Fine-tuning, the run
//! folder per run and the report come with the conductor issue.)

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::util;

/// The default backbone: the Keras ImageNet VGG16, obtained through pip.
const PRETRAINED: &str = "data-specs/models/keras-vgg16-imagenet.toml";
/// The fallback when pip cannot reach the registry: same topology, random weights.
const GENERATED: &str = "data-specs/models/vgg16-random.toml";

#[derive(clap::Args)]
pub struct Args {
    /// Image folder (one sub-folder per class). Default: the built-in demo
    /// dataset, generated on first use.
    #[arg(long)]
    data: Option<PathBuf>,
    /// A model spec (default: the pretrained Keras VGG16, or the generated
    /// VGG16 with random weights if pip cannot get it).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Where the stages write their outputs.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Stored image size (shorter side).
    #[arg(long, default_value_t = 256)]
    shorter_side: u32,
}

pub fn run(args: &Args) -> Result<()> {
    let started = std::time::Instant::now();
    crate::setup()?;
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            let dir = PathBuf::from("runs/demo-images");
            if !dir.exists() {
                let made = demo::generate(&dir, &demo::DemoOptions::default())?;
                eprintln!("generated the demo dataset ({} classes) in {}", made.images_per_class.len(), dir.display());
            }
            dir
        }
    };
    let model = match &args.model {
        Some(spec) => spec.clone(),
        None => default_model()?,
    };
    let bins = util::release_bins(&["ingest", "features", "head"])?;
    let (dataset, features, head) = (args.out.join("dataset"), args.out.join("features"), args.out.join("head"));

    util::run(
        Command::new(bins.join("ingest"))
            .arg("--root")
            .arg(&data)
            .arg("--out")
            .arg(&dataset)
            .args(["--shorter-side", &args.shorter_side.to_string()]),
    )?;
    util::run(
        Command::new(bins.join("features"))
            .arg("--dataset")
            .arg(&dataset)
            .arg("--model")
            .arg(&model)
            .arg("--out")
            .arg(&features),
    )?;
    util::run(Command::new(bins.join("head")).arg("train").arg("--features").arg(&features).arg("--out").arg(&head))?;

    println!(
        "\npipeline finished in {:.0} s: dataset, features and head in {}",
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    println!("head test metrics: {}", head.join("evaluation-test.json").display());
    println!("fine-tuning and the report are not wired into the pipeline yet (see ARCHITECTURE.md)");
    Ok(())
}

/// The pretrained VGG16 when pip can get it; otherwise the generated one,
/// said plainly.
fn default_model() -> Result<PathBuf> {
    let text = std::fs::read_to_string(PRETRAINED).with_context(|| format!("reading {PRETRAINED}"))?;
    let spec = spec::ModelSpec::from_toml(&text)?;
    match models::resolve_with_progress(&spec, &runtime::cache_dir()?, &progress::Terminal::new()) {
        Ok(_) => Ok(Path::new(PRETRAINED).to_path_buf()),
        Err(e) => {
            eprintln!("could not get the pretrained VGG16 ({e})");
            eprintln!("falling back to {GENERATED}: RANDOM weights, not pretrained; its results mean little");
            Ok(Path::new(GENERATED).to_path_buf())
        }
    }
}
