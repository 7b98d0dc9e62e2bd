//! The content-addressed feature cache: one folder per
//! [`CacheKey`](contracts::features::CacheKey) (model fingerprint,
//! preprocessing fingerprint, pooling, dtype) holding append-only Parquet
//! segments of `(content_id, embedding)`. The features stage writes it;
//! the head stage and fine-tuning's prefix cache read it, through this
//! crate and `features.json` alone, never through the features stage.
//!
//! - [`FeatureCache`] / [`Store`]: folders, segments, scans, compaction,
//!   quarantine of unreadable files.
//! - [`load_split`] / [`stream_split`]: a split's vectors with labels and
//!   ids, whole or in batches, in dataset order.
//! - [`cache_key`] / [`preprocess_fingerprint`]: the key an extraction of a
//!   dataset with a model writes under.
//! - [`open_features`]: the dataset and store a `features.json` names,
//!   checked to still match; [`verify`]: whether a features output is still
//!   whole (before trusting it again instead of extracting).
//!
//! No ONNX Runtime here: it only keeps vectors.

mod cache;
mod load;

use std::path::{Path, PathBuf};

use contracts::dataset::DatasetInfo;
use contracts::features::{CacheKey, Dtype, FeaturesInfo};
use dataset::Dataset;
use spec::{ModelSpec, Pooling};

pub use cache::{
    lock_path, segment_schema, vector_problem, FeatureCache, Index, Quarantined, Store, COL_CONTENT_ID, COL_EMBEDDING,
    KEY_FILE, LOCKS_DIR, META_KEY, META_SCHEMA_VERSION, QUARANTINE_DIR, SEGMENT_SCHEMA_VERSION,
};
pub use load::{load_split, stream_split, usable_records, SplitFeatures, SplitStream};

/// Why the cache could not be read or written. Each message names the file
/// concerned and, where there is one, what to do.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(
        "feature cache {}: {missing} of {wanted} vectors are not cached{}; run `features` for this dataset and model first",
        store.display(),
        quarantined_note(quarantined)
    )]
    Missing { store: PathBuf, missing: usize, wanted: usize, quarantined: Vec<String> },

    #[error("{}: {reason}", path.display())]
    Cache { path: PathBuf, reason: String },

    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: {what}: {source}", path.display())]
    Arrow {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: arrow_schema::ArrowError,
    },

    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("dataset: {0}")]
    Dataset(#[from] dataset::DatasetError),

    #[error(transparent)]
    Contract(#[from] contracts::ContractError),

    #[error(transparent)]
    Lock(#[from] atomic_file::LockError),
}

fn quarantined_note(quarantined: &[String]) -> String {
    if quarantined.is_empty() {
        String::new()
    } else {
        format!(" (files moved aside: {})", quarantined.join("; "))
    }
}

impl CacheError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
        move |source| CacheError::Io { path: path.to_path_buf(), source }
    }
}

/// The key for extracting a dataset (`dataset`: its `dataset.json`) with a
/// model (`spec`, and the resolved conv base's fingerprint).
pub fn cache_key(
    dataset: &DatasetInfo,
    spec: &ModelSpec,
    model_fingerprint: &str,
    pooling: Pooling,
    dtype: Dtype,
) -> CacheKey {
    CacheKey {
        model: spec.name.clone(),
        model_fingerprint: model_fingerprint.to_owned(),
        preprocess_fingerprint: preprocess_fingerprint(dataset, spec),
        pooling,
        dtype,
        embedding_len: pooling.pooled_len(spec.conv_base.shape),
    }
}

/// Everything that decides the pixels fed to the network for a given
/// image: the spec's input and preprocessing
/// ([`spec::ModelSpec::preprocess_fingerprint`]), the size and filter the
/// dataset stored its pixels at (the same source bytes stored at another
/// size give slightly different inputs), and the preprocessing
/// implementation ([`imaging::preprocess::IMPLEMENTATION`]).
pub fn preprocess_fingerprint(dataset: &DatasetInfo, spec: &ModelSpec) -> String {
    let stored = &dataset.spec;
    spec::fingerprint(
        "features-preprocess",
        &(spec.preprocess_fingerprint(), stored.size, stored.filter, imaging::preprocess::IMPLEMENTATION),
    )
    .0
}

/// Reads `DIR/features.json`.
pub fn read_features(dir: &Path) -> Result<FeaturesInfo, CacheError> {
    Ok(contracts::read(&dir.join(contracts::features::FEATURES_FILE))?)
}

/// Opens the dataset and the cache folder a `features.json` names, checking
/// that the dataset is still the one extracted (same fingerprint) and the
/// folder holds this key. Then [`load_split`] or [`stream_split`] read the
/// vectors.
pub fn open_features(info: &FeaturesInfo) -> Result<(Dataset, Store), CacheError> {
    let dataset = Dataset::open(&info.dataset.dir)?;
    if dataset.info().fingerprint != info.dataset.fingerprint {
        return Err(CacheError::Cache {
            path: info.dataset.dir.clone(),
            reason: "the dataset changed since its features were extracted (fingerprint differs); run `features` again"
                .into(),
        });
    }
    let store = Store::open(&info.cache.store)?;
    if !store.key().same_identity(&info.cache.key) {
        return Err(CacheError::Cache {
            path: info.cache.store.clone(),
            reason: "holds another cache key than features.json names; run `features` again".into(),
        });
    }
    Ok((dataset, store))
}

/// Checks that the features output in `features_dir` is still whole: its
/// `features.json` reads, the dataset it names is unchanged, the cache
/// folder it names exists and holds its key, and every image of the splits
/// it covers has a vector in a readable segment (or was rejected). A
/// deleted segment, or one found damaged (moved to `quarantine/` by this
/// check), is [`CacheError::Missing`]: run the features stage again, which
/// computes exactly the missing vectors. Reads the content ids only, not
/// the vectors.
pub fn verify(features_dir: &Path) -> Result<(), CacheError> {
    let info = read_features(features_dir)?;
    let (dataset, store) = open_features(&info)?;
    let index = store.scan()?;
    let (mut missing, mut wanted) = (0, 0);
    for &split in info.splits.keys() {
        for record in dataset.index(split)? {
            wanted += 1;
            if !index.covers(&record.content_id) {
                missing += 1;
            }
        }
    }
    if missing > 0 {
        return Err(CacheError::Missing {
            store: store.dir().to_path_buf(),
            missing,
            wanted,
            quarantined: index.quarantined().iter().map(|q| q.to_string()).collect(),
        });
    }
    Ok(())
}
