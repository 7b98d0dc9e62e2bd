//! The ingested dataset on disk: sharded Parquet files per split plus
//! `dataset.json` (`contracts::dataset::DatasetInfo`). The ingest stage
//! writes it with [`DatasetWriter`]; the features, head and finetune
//! stages read it with [`Dataset`], never through the ingest crate.
//!
//! - [`schema`]: columns and key-value metadata (the Parquet contract).
//! - [`write`]: one shard series per split, bounded row groups, flat memory.
//! - [`read`]: [`Dataset::open`], [`Dataset::batches`] (streaming, pixels
//!   optional), [`Dataset::row_groups`] (read one at a time, in any order),
//!   [`Dataset::index`].

pub mod read;
pub mod schema;
pub mod write;

pub use contracts::dataset::{DatasetInfo, SplitInfo};
pub use contracts::Split;
pub use read::{Batches, Dataset, DatasetError, Record, RowGroup};
pub use write::{DatasetWriter, Limits, Row};
