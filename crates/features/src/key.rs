//! What identifies a set of cached vectors.

use ingest::Dataset;
use models::ResolvedModel;
use serde::{Deserialize, Serialize};
use spec::Pooling;

use crate::pool::pooled_len;
use crate::preprocess;

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

/// Names of a pooling, as in specs and folder names.
pub fn pooling_name(pooling: Pooling) -> &'static str {
    match pooling {
        Pooling::Flatten => "flatten",
        Pooling::Avg => "avg",
        Pooling::Max => "max",
    }
}

/// Parses `flatten`, `avg` or `max`.
pub fn parse_pooling(s: &str) -> Result<Pooling, String> {
    match s {
        "flatten" => Ok(Pooling::Flatten),
        "avg" | "average" => Ok(Pooling::Avg),
        "max" => Ok(Pooling::Max),
        other => Err(format!("unknown pooling '{other}' (expected flatten, avg or max)")),
    }
}

/// The key of one cache folder: every vector in it was computed by the same
/// conv base from pixels prepared the same way, pooled and stored the same
/// way. Together with an image's content id it identifies one vector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// The model's name (informational: not part of the identity).
    pub model: String,
    /// [`ResolvedModel::fingerprint`]: the cut conv base's bytes and output.
    pub model_fingerprint: String,
    /// See [`CacheKey::preprocess_fingerprint`].
    pub preprocess_fingerprint: String,
    pub pooling: Pooling,
    pub dtype: Dtype,
    /// Values per vector.
    pub embedding_len: usize,
}

impl CacheKey {
    /// The key for extracting `dataset` with `model`.
    pub fn new(dataset: &Dataset, model: &ResolvedModel, pooling: Pooling, dtype: Dtype) -> CacheKey {
        CacheKey {
            model: model.spec.name.clone(),
            model_fingerprint: model.fingerprint.clone(),
            preprocess_fingerprint: Self::preprocess_fingerprint(dataset, model),
            pooling,
            dtype,
            embedding_len: pooled_len(model.spec.conv_base.shape, pooling),
        }
    }

    /// Everything that decides the pixels fed to the network for a given
    /// image: the spec's input and preprocessing
    /// ([`spec::ModelSpec::preprocess_fingerprint`]), the size and filter
    /// the dataset stored its pixels at (the same source bytes stored at
    /// another size give slightly different inputs), and this crate's
    /// preprocessing implementation ([`preprocess::IMPLEMENTATION`]).
    pub fn preprocess_fingerprint(dataset: &Dataset, model: &ResolvedModel) -> String {
        let stored = &dataset.info().spec;
        spec::fingerprint(
            "features-preprocess",
            &(model.spec.preprocess_fingerprint(), stored.size, stored.filter, preprocess::IMPLEMENTATION),
        )
        .0
    }

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
        format!("{name}-{}-{}-{}", pooling_name(self.pooling), self.dtype, self.fingerprint().short())
    }
}
