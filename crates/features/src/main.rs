//! `features`: a dataset's conv-base vectors into the feature cache, and
//! `OUT/features.json` naming them for the head stage.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use contracts::features::{Dtype, FEATURES_FILE};
use dataset::{Dataset, Split};
use feature_cache::FeatureCache;
use features::{extract, ExtractOptions};
use spec::{ModelSpec, Pooling};

/// Computes a dataset's conv-base vectors (those not cached yet) and
/// writes OUT/features.json naming them.
#[derive(Parser, Debug)]
#[command(name = "features", version)]
struct Args {
    /// The dataset folder written by `ingest`.
    #[arg(long)]
    dataset: PathBuf,
    /// The model spec (TOML), e.g. data-specs/models/tiny-vgg.toml.
    #[arg(long)]
    model: PathBuf,
    /// The feature cache folder [default: $TL_CACHE_DIR/features, else ~/.cache/tl-vision/features].
    #[arg(long)]
    cache: Option<PathBuf>,
    /// Images per inference batch.
    #[arg(long, default_value_t = features::DEFAULT_BATCH_SIZE)]
    batch: usize,
    /// flatten (or none), avg or max [default: the spec's conv_base.pooling].
    #[arg(long)]
    pooling: Option<Pooling>,
    /// Storage type of the vectors: f32 or f16.
    #[arg(long, default_value = "f32")]
    dtype: Dtype,
    /// Comma-separated splits [default: every split with rows].
    #[arg(long, value_delimiter = ',')]
    splits: Option<Vec<Split>>,
    /// ONNX Runtime intra-op threads [default: available cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Output folder for features.json.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
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

fn read_spec(path: &Path) -> Result<ModelSpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the model spec {}", path.display()))?;
    Ok(ModelSpec::from_toml(&text).map_err(|e| e.in_file("model spec", path))?)
}

fn run(args: Args) -> Result<()> {
    let spec = read_spec(&args.model)?;
    let dataset = Dataset::open(&args.dataset)
        .with_context(|| format!("cannot open the dataset {} (run `ingest` first)", args.dataset.display()))?;
    let models_cache = runtime::cache_dir()?;
    let model = models::resolve(&spec, &models_cache).with_context(|| {
        format!(
            "model spec {}: cannot obtain the conv base (check [source], conv_base.output and conv_base.shape in the spec)",
            args.model.display()
        )
    })?;
    println!("{}", model.weights_note());

    let cache_root = match &args.cache {
        Some(dir) => dir.clone(),
        None => FeatureCache::default_root()?,
    };
    let cache = FeatureCache::open(&cache_root)?;
    let options = ExtractOptions {
        batch_size: args.batch,
        pooling: args.pooling,
        dtype: args.dtype,
        splits: args.splits.clone(),
        threads: args.threads,
    };
    let summary = extract(&dataset, &model, &cache, &options, &progress::Terminal::new())
        .with_context(|| format!("model spec {}", args.model.display()))?;
    for q in &summary.quarantined {
        eprintln!("warning: feature cache: {q}");
    }
    for r in &summary.rejected {
        eprintln!("warning: rejected {} ({}): {}", r.path, r.content_id, r.reason);
    }
    for w in &summary.warnings {
        eprintln!("warning: {w}");
    }
    let info = features::features_info(&dataset, &model, cache.root(), &summary);
    let written = args.out.join(FEATURES_FILE);
    contracts::write(&written, &info)?;

    let rows: Vec<String> = summary.rows.iter().map(|(split, n)| format!("{split} {n}")).collect();
    let speed = if summary.computed > 0 {
        format!("{:.1} images/s", summary.images_per_second())
    } else {
        "nothing to compute".to_string()
    };
    println!(
        "features: {} images ({}): {} hits, {} computed, {} rejected in {:.1} s ({speed}); {} x {} ({}) per image",
        summary.hits + summary.computed + summary.rejected.len(),
        rows.join(", "),
        summary.hits,
        summary.computed,
        summary.rejected.len(),
        summary.seconds,
        summary.key.embedding_len,
        summary.key.dtype,
        summary.key.pooling.name(),
    );
    println!("cache: {}", summary.store.display());
    println!("wrote {}", written.display());
    Ok(())
}
