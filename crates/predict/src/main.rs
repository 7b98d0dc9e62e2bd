//! `predict`: an exported `model.onnx` → the top classes of image files.
//!
//! Exit status: 0 when every image was predicted, 3 when some could not be
//! (each reported on stderr as `path: reason`; the rest are still written),
//! 1 when none could be or the model is unusable, 2 for bad arguments.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use predict::{collect_images, output, Format, Prediction};

/// Predict the classes of images with a fine-tuned model.onnx, preprocessing
/// them as the training images were (EXIF orientation, stored size, the
/// model's resize, crop and normalisation, all from the model's metadata).
#[derive(Parser, Debug)]
#[command(name = "predict", version)]
struct Args {
    /// The model: a model.onnx, or a folder holding model.onnx or finetune/model.onnx.
    #[arg(long)]
    model: PathBuf,
    /// How many classes to list per image, most probable first.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Write here (atomically) instead of to stdout.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Images per ONNX Runtime run.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    batch_size: u32,
    /// ONNX Runtime intra-op threads (0: its default, all cores).
    #[arg(long, default_value_t = 0)]
    threads: usize,
    /// Refuse images that declare more pixels than this (decompression bombs).
    #[arg(long, default_value_t = spec::DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Image files, or folders (walked recursively; hidden files and
    /// non-image extensions skipped).
    #[arg(required = true)]
    inputs: Vec<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &Args) -> Result<ExitCode> {
    let mut predictor = predict::load(&args.model, args.threads)?.with_max_pixels(args.max_pixels);
    let metadata = predictor.metadata().clone();
    if metadata.stored.is_none() {
        eprintln!(
            "note: {} does not say how the training images were stored (no `{}` metadata); \
             images go straight to the model's preprocessing",
            predictor.path().display(),
            spec::META_STORED
        );
    }
    let (files, mut failures) = collect_images(&args.inputs);
    for failure in &failures {
        eprintln!("{failure}");
    }
    if files.is_empty() {
        bail!(
            "no images found in {}",
            args.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let mut predictions: Vec<Prediction> = Vec::with_capacity(files.len());
    for result in predictor.predict_images(&files, args.batch_size as usize) {
        match result {
            Ok(prediction) => predictions.push(prediction),
            Err(failure) => {
                eprintln!("{failure}");
                failures.push(failure);
            }
        }
    }
    if predictions.is_empty() {
        bail!("none of the {} image(s) could be predicted", files.len());
    }
    let text = output::render(args.format, &predictions, &metadata.class_names, args.top_k as usize);
    match &args.output {
        Some(path) => atomic_file::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(&text).and_then(|()| stdout.flush()).context("cannot write to stdout")?;
        }
    }
    if failures.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("predicted {} image(s); {} input(s) failed", predictions.len(), failures.len());
        Ok(ExitCode::from(3))
    }
}
