//! The dataset's file contract: Parquet columns, key-value metadata and the
//! `dataset.json` summary. Documented in the crate README; bump
//! [`SCHEMA_VERSION`] on any incompatible change.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use spec::DatasetSpec;

use crate::Split;

pub const SCHEMA_VERSION: u32 = 1;

/// Summary file written beside the shards.
pub const INFO_FILE: &str = "dataset.json";
/// Rejected, duplicate and conflicting files: `path,kind,reason`.
pub const REJECTS_FILE: &str = "rejects.csv";

/// Parquet key-value metadata keys.
pub const META_CLASSES: &str = "tl.classes";
pub const META_SPEC: &str = "tl.spec";
pub const META_SCHEMA_VERSION: &str = "tl.schema_version";
pub const META_SPLIT: &str = "tl.split";

pub mod col {
    pub const CONTENT_ID: &str = "content_id";
    pub const PATH: &str = "path";
    pub const LABEL: &str = "label";
    pub const LABEL_INDEX: &str = "label_index";
    pub const SPLIT: &str = "split";
    pub const WIDTH: &str = "width";
    pub const HEIGHT: &str = "height";
    pub const STORED_WIDTH: &str = "stored_width";
    pub const STORED_HEIGHT: &str = "stored_height";
    pub const PIXELS: &str = "pixels";
}

/// One row per image. `pixels` is RGB8, row-major, `stored_height *
/// stored_width * 3` bytes; `width`/`height` are the original size after EXIF
/// orientation.
pub fn arrow_schema() -> SchemaRef {
    use col::*;
    Arc::new(Schema::new(vec![
        Field::new(CONTENT_ID, DataType::Utf8, false),
        Field::new(PATH, DataType::Utf8, false),
        Field::new(LABEL, DataType::Utf8, false),
        Field::new(LABEL_INDEX, DataType::Int32, false),
        Field::new(SPLIT, DataType::Utf8, false),
        Field::new(WIDTH, DataType::Int32, false),
        Field::new(HEIGHT, DataType::Int32, false),
        Field::new(STORED_WIDTH, DataType::Int32, false),
        Field::new(STORED_HEIGHT, DataType::Int32, false),
        Field::new(PIXELS, DataType::Binary, false),
    ]))
}

/// Rows and shard files of one split.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitInfo {
    pub rows: usize,
    /// Rows per class, indexed like `DatasetInfo::classes`.
    pub per_class: Vec<usize>,
    /// Shard file names, relative to the dataset folder, in row order.
    pub shards: Vec<String>,
}

/// The content of `dataset.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetInfo {
    pub schema_version: u32,
    pub name: String,
    pub classes: Vec<String>,
    /// The resolved spec that produced this dataset.
    pub spec: DatasetSpec,
    /// Changes when any row's content, label or split changes, or the spec does.
    pub fingerprint: String,
    pub splits: BTreeMap<Split, SplitInfo>,
    pub rejected: usize,
    pub duplicates: usize,
    pub conflicts: usize,
    pub ignored: usize,
    pub warnings: Vec<String>,
}

impl DatasetInfo {
    pub fn split(&self, split: Split) -> &SplitInfo {
        static EMPTY: std::sync::OnceLock<SplitInfo> = std::sync::OnceLock::new();
        self.splits.get(&split).unwrap_or_else(|| EMPTY.get_or_init(SplitInfo::default))
    }

    pub fn total_rows(&self) -> usize {
        self.splits.values().map(|s| s.rows).sum()
    }
}
