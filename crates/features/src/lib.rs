//! Conv-base embeddings for transfer learning: a dataset (from `ingest`)
//! goes through a model's conv base (ONNX Runtime) into a content-addressed
//! feature cache, which the head stage then reads.
//!
//! - [`extract`]: computes what the cache lacks, streaming the dataset in
//!   batches (a producer thread preprocesses the next batch, through
//!   `imaging::preprocess`, while ONNX Runtime runs the current one).
//! - [`pool`] (pure): the output map → flatten, global average or global max.
//! - [`features_info`]: the record written as `features.json`
//!   (`contracts::features::FeaturesInfo`), the stage's file contract.
//!
//! The cache itself (folders, segments, readers) is the `feature-cache`
//! crate, which the head stage reads without depending on this one.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use feature_cache::{load_split, FeatureCache};
//! use features::{extract, ExtractOptions};
//! let dataset = dataset::Dataset::open("data/demo".as_ref())?;
//! let spec = spec::ModelSpec::from_toml(&std::fs::read_to_string("data-specs/models/tiny-vgg.toml")?)?;
//! let model = models::resolve(&spec, &runtime::cache_dir()?)?;
//! let cache = FeatureCache::open(&FeatureCache::default_root()?)?;
//! let summary = extract(&dataset, &model, &cache, &ExtractOptions::default(), &progress::Silent)?;
//! let store = cache.store(&summary.key)?;
//! let train = load_split(&dataset, &store, dataset::Split::Train)?;
//! println!("{} x {} features, {} labels", train.features.nrows(), train.features.ncols(), train.labels.len());
//! # Ok(()) }
//! ```
//!
//! This crate knows nothing of heads or training: it only turns images into
//! vectors and keeps them.

mod extract;
pub mod pool;

use std::path::{Path, PathBuf};

use contracts::features::{CacheInfo, DatasetRef, FeaturesInfo, ModelInfo};
use dataset::Dataset;
use models::ResolvedModel;

pub use extract::{extract, ConvBase, ExtractOptions, ExtractSummary, DEFAULT_BATCH_SIZE};

/// Everything that can stop extraction. Each message names the file
/// concerned and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    #[error("{}: ONNX Runtime: {source}", model.display())]
    Ort {
        model: PathBuf,
        #[source]
        source: runtime::ort::Error,
    },

    #[error("{} (model '{name}'): {message}; fix [input] in the model spec or use the model it was written for", model.display())]
    Input { model: PathBuf, name: String, message: String },

    #[error(
        "{} (model '{name}'): no output named '{output}' (outputs: {available:?}); \
         set conv_base.output in the model spec to the tensor where the conv base ends",
        model.display()
    )]
    UnknownOutput { model: PathBuf, name: String, output: String, available: Vec<String> },

    #[error("{} (model '{name}'): {message}; fix conv_base.shape in the model spec", model.display())]
    OutputShape { model: PathBuf, name: String, message: String },

    #[error(
        "model '{name}': conv_base.shape = {shape} is already pooled, so {} pooling has nothing to pool; \
         use flatten (or none), or cut the model at its [C, H, W] map",
        pooling.name()
    )]
    AlreadyPooled { name: String, shape: spec::ConvShape, pooling: spec::Pooling },

    #[error(
        "dataset {}: no rows in the {split} split (rows per split: {rows}); \
         choose other splits (--splits) or re-ingest with a non-zero {split} ratio",
        dataset.display()
    )]
    EmptySplit { dataset: PathBuf, split: dataset::Split, rows: String },

    #[error("dataset {}: row {content_id}: {source}; re-ingest the dataset", dataset.display())]
    BadRecord {
        dataset: PathBuf,
        content_id: String,
        #[source]
        source: imaging::preprocess::PixelSizeError,
    },

    #[error(transparent)]
    Cache(#[from] feature_cache::CacheError),

    #[error("dataset: {0}")]
    Dataset(#[from] dataset::DatasetError),
}

/// The record of an extraction, written as `features.json`.
pub fn features_info(
    dataset: &Dataset,
    model: &ResolvedModel,
    cache_root: &Path,
    summary: &ExtractSummary,
) -> FeaturesInfo {
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    FeaturesInfo {
        model: ModelInfo {
            name: model.spec.name.clone(),
            fingerprint: model.fingerprint.clone(),
            pretrained: model.pretrained,
            weights_note: model.weights_note(),
            conv_base: absolute(&model.conv_base),
            spec: model.spec.clone(),
        },
        preprocess_fingerprint: summary.key.preprocess_fingerprint.clone(),
        pooling: summary.key.pooling,
        dtype: summary.key.dtype,
        embedding_len: summary.key.embedding_len,
        dataset: DatasetRef {
            dir: absolute(dataset.dir()),
            fingerprint: dataset.info().fingerprint.clone(),
            classes: dataset.classes().to_vec(),
        },
        cache: CacheInfo { root: absolute(cache_root), store: absolute(&summary.store), key: summary.key.clone() },
        splits: summary.rows.clone(),
        hits: summary.hits,
        computed: summary.computed,
        seconds: summary.seconds,
        images_per_second: summary.images_per_second(),
        threads: summary.threads,
        rejected: summary.rejected.clone(),
    }
}
