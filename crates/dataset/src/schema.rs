//! The Parquet half of the dataset's file contract: columns and key-value
//! metadata (the `dataset.json` half is `contracts::dataset`). Documented
//! in the crate README; bump [`SCHEMA_VERSION`] on any incompatible change.

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};

pub use contracts::dataset::{INFO_FILE, REJECTS_FILE};

/// The shards' layout version (`tl.schema_version` in their metadata).
pub const SCHEMA_VERSION: u32 = 1;

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
