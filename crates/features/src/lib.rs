//! Conv-base embeddings for transfer learning: a dataset (from `ingest`)
//! goes through a model's conv base (ONNX Runtime) into a content-addressed
//! feature cache, which the head stage then reads.
//!
//! - [`preprocess`] (pure): stored RGB8 → resize/crop → channel order →
//!   `(p·scale − mean)/std` → NCHW or NHWC f32, as the model spec says.
//! - [`pool`] (pure): the output map → flatten, global average or global max.
//! - [`FeatureCache`] / [`Store`]: one folder per [`CacheKey`] (model
//!   fingerprint, preprocessing fingerprint, pooling, dtype) holding
//!   append-only Parquet segments of `(content_id, embedding)`.
//! - [`extract`]: computes what the cache lacks, streaming the dataset in
//!   batches (a producer thread decodes and preprocesses the next batch
//!   while ONNX Runtime runs the current one).
//! - [`load_split`] / [`stream_split`]: a split's vectors with labels and
//!   ids, whole or in batches, in dataset order.
//! - [`FeaturesInfo`]: `features.json`, the stage's file contract.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use features::{extract, load_split, ExtractOptions, FeatureCache};
//! let dataset = ingest::Dataset::open("data/demo".as_ref())?;
//! let spec = spec::ModelSpec::from_toml(&std::fs::read_to_string("data-specs/models/tiny-vgg.toml")?)?;
//! let model = models::resolve(&spec, &runtime::cache_dir()?)?;
//! let cache = FeatureCache::open(&FeatureCache::default_root()?)?;
//! let summary = extract(&dataset, &model, &cache, &ExtractOptions::default(), &progress::Silent)?;
//! let store = cache.store(&summary.key)?;
//! let train = load_split(&dataset, &store, ingest::Split::Train)?;
//! println!("{} x {} features, {} labels", train.features.nrows(), train.features.ncols(), train.labels.len());
//! # Ok(()) }
//! ```
//!
//! This crate knows nothing of heads or training: it only turns images into
//! vectors and keeps them.

mod cache;
mod contract;
mod extract;
mod key;
mod load;
pub mod pool;
pub mod preprocess;

use std::path::{Path, PathBuf};

pub use cache::{
    segment_schema, FeatureCache, Index, Quarantined, Store, COL_CONTENT_ID, COL_EMBEDDING, KEY_FILE, META_KEY,
    META_SCHEMA_VERSION, QUARANTINE_DIR, SEGMENT_SCHEMA_VERSION,
};
pub use contract::{CacheInfo, DatasetRef, FeaturesInfo, ModelInfo, CONTRACT_VERSION, FEATURES_FILE};
pub use extract::{extract, ConvBase, ExtractOptions, ExtractSummary, DEFAULT_BATCH_SIZE};
pub use key::{parse_pooling, pooling_name, CacheKey, Dtype};
pub use load::{load_split, stream_split, SplitFeatures, SplitStream};

/// Everything that can stop extraction or loading. Each message names the
/// file concerned and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum FeaturesError {
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    #[error("{model}: ONNX Runtime: {message}")]
    Ort { model: PathBuf, message: String },

    #[error("{model} (model '{name}'): {message}; fix [input] in the model spec or use the model it was written for")]
    Input { model: PathBuf, name: String, message: String },

    #[error(
        "{model} (model '{name}'): no output named '{output}' (outputs: {available:?}); \
         set conv_base.output in the model spec to the tensor where the conv base ends"
    )]
    UnknownOutput { model: PathBuf, name: String, output: String, available: Vec<String> },

    #[error("{model} (model '{name}'): {message}; fix conv_base.shape in the model spec")]
    OutputShape { model: PathBuf, name: String, message: String },

    #[error(
        "dataset {dataset}: no rows in the {split} split (rows per split: {rows}); \
         choose other splits (--splits) or re-ingest with a non-zero {split} ratio"
    )]
    EmptySplit { dataset: PathBuf, split: ingest::Split, rows: String },

    #[error("dataset {dataset}: row {content_id}: {message}; re-ingest the dataset")]
    BadRecord { dataset: PathBuf, content_id: String, message: String },

    #[error("dataset: {0}")]
    Dataset(#[from] ingest::ReadError),

    #[error(
        "feature cache {store}: {missing} of {wanted} vectors are not cached{}; run `features` for this dataset and model first",
        quarantined_note(quarantined)
    )]
    Missing { store: PathBuf, missing: usize, wanted: usize, quarantined: Vec<String> },

    #[error("{path}: {reason}")]
    Cache { path: PathBuf, reason: String },

    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: {source}")]
    Parquet { path: PathBuf, source: parquet::errors::ParquetError },
}

fn quarantined_note(quarantined: &[String]) -> String {
    if quarantined.is_empty() {
        String::new()
    } else {
        format!(" (files moved aside: {})", quarantined.join("; "))
    }
}

impl FeaturesError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FeaturesError + '_ {
        move |source| FeaturesError::Io { path: path.to_path_buf(), source }
    }
}
