//! Specs every stage reads, the fingerprints that key caches and skip
//! up-to-date stages, and the metadata contract of an exported inference
//! model ([`InferenceMetadata`]).
//!
//! This crate is pure: it parses and serialises text and hashes bytes. It
//! never touches the file system, so every stage can depend on it and tests
//! need no fixtures.

mod dataset;
mod error;
mod fingerprint;
mod inference;
mod model;
pub mod names;

pub use dataset::{
    DatasetSource, DatasetSpec, ResizeFilter, SplitRatios, StoredSize, DEFAULT_DATASET_NAME, DEFAULT_MAX_PIXELS,
};
pub use error::{parse_toml, FileError, SpecError};
pub use fingerprint::{fingerprint, sha256_hex, Fingerprint};
pub use inference::{
    InferenceMetadata, MetadataError, StoredImage, META_CLASS_NAMES, META_INPUT, META_KEYS, META_MODEL, META_OUTPUT,
    META_PREPROCESS, META_PREPROCESS_FINGERPRINT, META_STORED, META_WEIGHTS_NOTE, OUTPUT_PROBABILITIES,
    WEIGHTS_PRETRAINED, WEIGHTS_RANDOM,
};
pub use model::{
    BatchNormMode, Block, ColorOrder, ConvBase, ConvShape, FineTuneSpec, InputSpec, Layout, ModelSource, ModelSpec,
    Pooling, Preprocess, Resize,
};
