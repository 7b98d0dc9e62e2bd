//! `predict`: an exported `model.onnx` → the top classes of image files.
//!
//! Exit status: 0 when every image was predicted, 3 when some could not be
//! (each reported on stderr as `path: reason`; the rest are still written),
//! 1 when none could be or the model is unusable, 2 for bad arguments.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Parser;
use predict::{collect_images, output, Format};
use progress::Progress;

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
        Ok(code) => {
            progress::report_peak();
            code
        }
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
    let (files, unlisted) = collect_images(&args.inputs);
    for failure in &unlisted {
        eprintln!("{failure}");
    }
    if files.is_empty() {
        bail!(
            "no images found in {}",
            args.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
    }
    let progress = progress::Terminal::new();
    progress.start("predict", files.len() as u64);
    let written = match &args.output {
        Some(path) => write_file(path, |out| predict_into(&mut predictor, &files, args, &progress, out))?,
        None => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            predict_into(&mut predictor, &files, args, &progress, &mut stdout).context("cannot write to stdout")?
        }
    };
    progress.finish();
    let (predicted, failed) = written;
    let failures = unlisted.len() as u64 + failed;
    if predicted == 0 {
        bail!("none of the {} image(s) could be predicted", files.len());
    }
    if failures == 0 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("predicted {predicted} image(s); {failures} input(s) failed");
        Ok(ExitCode::from(3))
    }
}

/// Predicts `files` into `out` as it goes, reporting each failure on stderr
/// as it happens (keeping none); returns how many were predicted and how
/// many failed. With none predicted nothing is written to `out`.
fn predict_into(
    predictor: &mut predict::Predictor,
    files: &[PathBuf],
    args: &Args,
    progress: &dyn Progress,
    out: &mut dyn Write,
) -> std::io::Result<(u64, u64)> {
    let class_names = predictor.metadata().class_names.clone();
    let mut writer = output::Writer::new(args.format, out, &class_names, args.top_k as usize);
    let mut failures = 0;
    predictor.predict_each(files, args.batch_size as usize, progress, |result| match result {
        Ok(prediction) => writer.write(&prediction),
        Err(failure) => {
            eprintln!("{failure}");
            failures += 1;
            Ok(())
        }
    })?;
    let predicted = writer.written();
    if predicted > 0 {
        writer.finish()?;
    }
    Ok((predicted, failures))
}

/// Streams into `path`'s temporary sibling ([`atomic_file::partial_path`])
/// and renames it into place once `fill` is done and something was
/// predicted; otherwise, or on any error, removes it. First removes the
/// siblings that killed runs left in the same folder.
fn write_file(path: &Path, fill: impl FnOnce(&mut dyn Write) -> std::io::Result<(u64, u64)>) -> Result<(u64, u64)> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    atomic_file::remove_stale_partials(folder, false);
    let partial = atomic_file::partial_path(path);
    let filled = (|| {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&partial)?);
        let written = fill(&mut file)?;
        file.into_inner().map_err(std::io::IntoInnerError::into_error)?.sync_all()?;
        Ok::<_, std::io::Error>(written)
    })()
    .with_context(|| format!("cannot write {}", partial.display()));
    let published = match filled {
        Ok(written) if written.0 > 0 => atomic_file::rename(&partial, path)
            .with_context(|| format!("cannot write {}", path.display()))
            .map(|()| written),
        other => other,
    };
    if !matches!(&published, Ok(written) if written.0 > 0) {
        let _ = std::fs::remove_file(&partial);
    }
    published
}
