//! `features.json`: what the features stage writes into its output folder,
//! and the head stage reads to find its inputs; and [`CacheKey`], the
//! identity of a feature-cache folder (its `key.json`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use spec::{ModelSpec, Pooling};

use crate::{Contract, Split};

/// The file's name in the output folder.
pub const FEATURES_FILE: &str = "features.json";

/// The content of `features.json`. See the crate README for an example.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeaturesInfo {
    pub model: ModelInfo,
    /// `feature_cache::preprocess_fingerprint`.
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
    /// Images whose vectors were refused (not finite, or too large for the
    /// dtype), sorted by content id: they are in no split the head reads.
    /// Absent when there are none (files from before it read as none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<RejectedImage>,
}

/// An image the features stage could not give a usable vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedImage {
    pub content_id: String,
    /// The image's path as the dataset records it.
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub name: String,
    /// `models::ResolvedModel::fingerprint`.
    pub fingerprint: String,
    /// False for generated (random) weights.
    pub pretrained: bool,
    /// `models::ResolvedModel::weights_note`.
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

/// A cache folder's `key.json`.
impl Contract for CacheKey {
    const NAME: &'static str = "key.json";
    const SCHEMA_VERSION: u32 = 1;
}

impl Contract for FeaturesInfo {
    const NAME: &'static str = "features.json";
    const SCHEMA_VERSION: u32 = 1;
}

/// How vectors are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// 4 bytes a value.
    #[default]
    F32,
    /// IEEE half precision (2 bytes, 11-bit significand, largest 65504),
    /// rounded to nearest: half the disk and memory, about 3 significant digits.
    F16,
}

impl Dtype {
    pub fn as_str(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "f16" | "float16" => Ok(Dtype::F16),
            other => Err(format!("unknown dtype '{other}' (expected f32 or f16)")),
        }
    }
}

/// The key of one cache folder: every vector in it was computed by the same
/// conv base from pixels prepared the same way, pooled and stored the same
/// way. Together with an image's content id it identifies one vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The model's name (informational: not part of the identity).
    pub model: String,
    /// `models::ResolvedModel::fingerprint`: the cut conv base's bytes and output.
    pub model_fingerprint: String,
    /// See `feature_cache::preprocess_fingerprint`.
    pub preprocess_fingerprint: String,
    pub pooling: Pooling,
    pub dtype: Dtype,
    /// Values per vector.
    pub embedding_len: usize,
}

impl CacheKey {
    /// The identity of the key (everything but the informational name).
    pub fn fingerprint(&self) -> spec::Fingerprint {
        spec::fingerprint(
            "feature-cache-key",
            &(&self.model_fingerprint, &self.preprocess_fingerprint, self.pooling, self.dtype, self.embedding_len),
        )
    }

    /// Whether two keys name the same vectors (the model name aside).
    pub fn same_identity(&self, other: &CacheKey) -> bool {
        self.fingerprint() == other.fingerprint()
    }

    /// The cache folder's name: readable parts, then the identity.
    pub fn folder_name(&self) -> String {
        let name: String = self
            .model
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
            .take(48)
            .collect();
        format!("{name}-{}-{}-{}", self.pooling.name(), self.dtype, self.fingerprint().short())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> FeaturesInfo {
        let spec = ModelSpec::from_toml(include_str!("../../../data-specs/models/tiny-vgg.toml")).unwrap();
        let key = CacheKey {
            model: spec.name.clone(),
            model_fingerprint: "m".into(),
            preprocess_fingerprint: "p".into(),
            pooling: Pooling::Flatten,
            dtype: Dtype::F32,
            embedding_len: 16,
        };
        FeaturesInfo {
            model: ModelInfo {
                name: spec.name.clone(),
                fingerprint: "m".into(),
                pretrained: false,
                weights_note: String::new(),
                conv_base: "conv.onnx".into(),
                spec,
            },
            preprocess_fingerprint: "p".into(),
            pooling: Pooling::Flatten,
            dtype: Dtype::F32,
            embedding_len: 16,
            dataset: DatasetRef { dir: "data".into(), fingerprint: "d".into(), classes: vec!["a".into()] },
            cache: CacheInfo { root: "cache".into(), store: "cache/x".into(), key },
            splits: BTreeMap::new(),
            hits: 0,
            computed: 1,
            seconds: 0.0,
            images_per_second: 0.0,
            threads: 1,
            rejected: Vec::new(),
        }
    }

    #[test]
    fn rejected_images_are_written_only_when_there_are_some_and_older_files_read_as_none() {
        let plain = serde_json::to_value(info()).unwrap();
        assert!(plain.get("rejected").is_none(), "no field when nothing was rejected: older digests hold");
        let older: FeaturesInfo = serde_json::from_value(plain).unwrap();
        assert!(older.rejected.is_empty());

        let rejected = RejectedImage { content_id: "ab12".into(), path: "cats/1.png".into(), reason: "NaN".into() };
        let with = FeaturesInfo { rejected: vec![rejected.clone()], ..info() };
        let value = serde_json::to_value(&with).unwrap();
        assert_eq!(value["rejected"][0]["path"], "cats/1.png");
        assert_eq!(serde_json::from_value::<FeaturesInfo>(value).unwrap().rejected, [rejected]);
    }
}
