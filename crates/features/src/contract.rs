//! `features.json`: what the `features` binary writes into its output
//! folder, and the head stage reads to find its inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ingest::{Dataset, Split};
use models::ResolvedModel;
use serde::{Deserialize, Serialize};
use spec::{ModelSpec, Pooling};

use crate::cache::{write_atomically, Store};
use crate::extract::ExtractSummary;
use crate::key::{CacheKey, Dtype};
use crate::FeaturesError;

/// The file's name in the output folder.
pub const FEATURES_FILE: &str = "features.json";
/// Version of the `features.json` layout; bumped on incompatible changes.
pub const CONTRACT_VERSION: u32 = 1;

/// The content of `features.json`. See the crate README for an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeaturesInfo {
    pub schema_version: u32,
    pub model: ModelInfo,
    /// [`CacheKey::preprocess_fingerprint`].
    pub preprocess_fingerprint: String,
    pub pooling: Pooling,
    pub dtype: Dtype,
    /// Values per vector.
    pub embedding_len: usize,
    pub dataset: DatasetRef,
    pub cache: CacheInfo,
    /// Rows per extracted split.
    pub splits: BTreeMap<Split, usize>,
    /// Distinct images found in the cache / computed by the run.
    pub hits: usize,
    pub computed: usize,
    /// Wall time of the extraction.
    pub seconds: f64,
    /// Computed images per second of inference (0 when all were hits).
    pub images_per_second: f64,
    /// ONNX Runtime intra-op threads.
    pub threads: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// [`ResolvedModel::fingerprint`].
    pub fingerprint: String,
    /// False for generated (random) weights.
    pub pretrained: bool,
    /// [`ResolvedModel::weights_note`].
    pub weights_note: String,
    /// The conv-base ONNX file that ran.
    pub conv_base: PathBuf,
    /// The resolved model spec.
    pub spec: ModelSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// The dataset folder (absolute).
    pub dir: PathBuf,
    /// `dataset.json`'s fingerprint at extraction time.
    pub fingerprint: String,
    /// Class names, in label-index order.
    pub classes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheInfo {
    /// The cache's root folder.
    pub root: PathBuf,
    /// The key's folder under it, which holds the vectors.
    pub store: PathBuf,
    pub key: CacheKey,
}

impl FeaturesInfo {
    /// The record of an extraction.
    pub fn new(dataset: &Dataset, model: &ResolvedModel, cache_root: &Path, summary: &ExtractSummary) -> FeaturesInfo {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        FeaturesInfo {
            schema_version: CONTRACT_VERSION,
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
        }
    }

    /// Writes `DIR/features.json` (atomically; `DIR` is created).
    pub fn write(&self, dir: &Path) -> Result<PathBuf, FeaturesError> {
        std::fs::create_dir_all(dir).map_err(FeaturesError::io(dir))?;
        let path = dir.join(FEATURES_FILE);
        let json = serde_json::to_string_pretty(self).expect("features info serialises") + "\n";
        write_atomically(&path, json.as_bytes())?;
        Ok(path)
    }

    /// Reads `DIR/features.json`.
    pub fn read(dir: &Path) -> Result<FeaturesInfo, FeaturesError> {
        let path = dir.join(FEATURES_FILE);
        let text = std::fs::read_to_string(&path).map_err(FeaturesError::io(&path))?;
        let info: FeaturesInfo = serde_json::from_str(&text)
            .map_err(|e| FeaturesError::Cache { path: path.clone(), reason: format!("not a features.json: {e}") })?;
        if info.schema_version != CONTRACT_VERSION {
            return Err(FeaturesError::Cache {
                path,
                reason: format!(
                    "schema version {} (this build reads {CONTRACT_VERSION}); run `features` again",
                    info.schema_version
                ),
            });
        }
        Ok(info)
    }

    /// Opens the dataset and the cache folder this file names, checking
    /// that the dataset is still the one extracted (same fingerprint) and
    /// the folder holds this key. Then [`crate::load_split`] or
    /// [`crate::stream_split`] read the vectors.
    pub fn open(&self) -> Result<(Dataset, Store), FeaturesError> {
        let dataset = Dataset::open(&self.dataset.dir)?;
        if dataset.info().fingerprint != self.dataset.fingerprint {
            return Err(FeaturesError::Cache {
                path: self.dataset.dir.clone(),
                reason:
                    "the dataset changed since its features were extracted (fingerprint differs); run `features` again"
                        .into(),
            });
        }
        let store = Store::open(&self.cache.store)?;
        if !store.key().same_identity(&self.cache.key) {
            return Err(FeaturesError::Cache {
                path: self.cache.store.clone(),
                reason: "holds another cache key than features.json names; run `features` again".into(),
            });
        }
        Ok((dataset, store))
    }
}
