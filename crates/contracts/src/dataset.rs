//! `dataset.json`: the ingest stage's summary beside its Parquet shards
//! (whose columns and metadata are the `dataset` crate's contract).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use spec::DatasetSpec;

use crate::{Contract, Split};

/// Summary file written beside the shards.
pub const INFO_FILE: &str = "dataset.json";
/// Rejected, duplicate and conflicting files: `path,kind,reason`.
pub const REJECTS_FILE: &str = "rejects.csv";

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

impl Contract for DatasetInfo {
    const NAME: &'static str = "dataset.json";
    const SCHEMA_VERSION: u32 = 1;
}
