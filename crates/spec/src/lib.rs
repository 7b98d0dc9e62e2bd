//! Specs every stage reads, and the fingerprints that key caches and skip
//! up-to-date stages.
//!
//! This crate is pure: it parses and serialises text and hashes bytes. It
//! never touches the file system, so every stage can depend on it and tests
//! need no fixtures.

mod dataset;
mod fingerprint;
mod model;

pub use dataset::{DatasetSource, DatasetSpec, ResizeFilter, SplitRatios, StoredSize};
pub use fingerprint::{fingerprint, sha256_hex, Fingerprint};
pub use model::{Block, ColorOrder, ConvBase, InputSpec, Layout, ModelSource, ModelSpec, Pooling, Preprocess, Resize};

/// A spec that failed to parse or validate.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("invalid TOML: {0}")]
    Toml(#[from] toml::de::Error),
    #[error("{0}")]
    Invalid(String),
}
