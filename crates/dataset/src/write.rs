//! Streaming Parquet writer: one file series (shards) per split, bounded row
//! groups, so memory stays flat however many images there are.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, BinaryArray, Int32Array, RecordBatch, StringArray};
use image::RgbImage;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

use contracts::dataset::SplitInfo;
use contracts::Split;

use crate::schema::{self, col};
use crate::DatasetError;

/// One decoded image ready to be written.
pub struct Row {
    pub content_id: String,
    pub rel: String,
    pub label_index: u32,
    pub split: Split,
    pub original: (u32, u32),
    pub stored: RgbImage,
}

pub struct Limits {
    pub rows_per_shard: usize,
    pub rows_per_group: usize,
}

pub struct DatasetWriter {
    dir: PathBuf,
    classes: Vec<String>,
    spec_json: String,
    limits: Limits,
    splits: BTreeMap<Split, SplitWriter>,
    content_hash: Sha256,
}

struct SplitWriter {
    writer: Option<ArrowWriter<File>>,
    pending: Vec<Row>,
    rows_in_shard: usize,
    info: SplitInfo,
}

impl DatasetWriter {
    pub fn new(dir: &Path, classes: Vec<String>, spec_json: String, limits: Limits) -> Self {
        let mut content_hash = Sha256::new();
        content_hash.update(spec_json.as_bytes());
        DatasetWriter { dir: dir.to_path_buf(), classes, spec_json, limits, splits: BTreeMap::new(), content_hash }
    }

    pub fn push(&mut self, row: Row) -> Result<(), DatasetError> {
        self.content_hash.update(format!("{} {} {}\n", row.content_id, row.label_index, row.split).as_bytes());
        let n_classes = self.classes.len();
        let split = row.split;
        let w = self.splits.entry(split).or_insert_with(|| SplitWriter {
            writer: None,
            pending: Vec::new(),
            rows_in_shard: 0,
            info: SplitInfo { per_class: vec![0; n_classes], ..Default::default() },
        });
        w.info.rows += 1;
        w.info.per_class[row.label_index as usize] += 1;
        w.pending.push(row);
        if w.pending.len() >= self.limits.rows_per_group {
            self.flush_group(split)?;
        }
        Ok(())
    }

    fn flush_group(&mut self, split: Split) -> Result<(), DatasetError> {
        let w = self.splits.get_mut(&split).expect("writer exists for pushed split");
        if w.pending.is_empty() {
            return Ok(());
        }
        if w.writer.is_none() {
            let name = format!("{}-{:05}.parquet", split.as_str(), w.info.shards.len());
            let path = self.dir.join(&name);
            let file = File::create(&path).map_err(|e| DatasetError::io(&path, e))?;
            let props = writer_properties(&self.classes, &self.spec_json, split, self.limits.rows_per_group);
            let writer = ArrowWriter::try_new(file, schema::arrow_schema(), Some(props))
                .map_err(|e| DatasetError::parquet(&path, e))?;
            w.writer = Some(writer);
            w.info.shards.push(name);
        }
        let rows = std::mem::take(&mut w.pending);
        let batch = to_record_batch(&rows, &self.classes, split);
        let writer = w.writer.as_mut().expect("opened above");
        let shard_path = self.dir.join(w.info.shards.last().expect("named above"));
        writer.write(&batch).map_err(|e| DatasetError::parquet(&shard_path, e))?;
        writer.flush().map_err(|e| DatasetError::parquet(&shard_path, e))?;
        w.rows_in_shard += rows.len();
        if w.rows_in_shard >= self.limits.rows_per_shard {
            let writer = w.writer.take().expect("opened above");
            writer.close().map_err(|e| DatasetError::parquet(&shard_path, e))?;
            w.rows_in_shard = 0;
        }
        Ok(())
    }

    /// Flushes and closes every shard; returns per-split info and the
    /// dataset's content fingerprint.
    pub fn finish(mut self) -> Result<(BTreeMap<Split, SplitInfo>, String), DatasetError> {
        let splits: Vec<Split> = self.splits.keys().copied().collect();
        for split in splits {
            self.flush_group(split)?;
            let w = self.splits.get_mut(&split).expect("listed above");
            if let Some(writer) = w.writer.take() {
                let path = self.dir.join(w.info.shards.last().expect("open writer has a name"));
                writer.close().map_err(|e| DatasetError::parquet(&path, e))?;
            }
        }
        let fingerprint = hex::encode(self.content_hash.finalize());
        Ok((self.splits.into_iter().map(|(k, w)| (k, w.info)).collect(), fingerprint))
    }
}

fn writer_properties(classes: &[String], spec_json: &str, split: Split, rows_per_group: usize) -> WriterProperties {
    let pixels = ColumnPath::from(col::PIXELS);
    let kv = vec![
        KeyValue::new(schema::META_SCHEMA_VERSION.into(), schema::SCHEMA_VERSION.to_string()),
        KeyValue::new(schema::META_CLASSES.into(), serde_json::to_string(classes).expect("strings serialise")),
        KeyValue::new(schema::META_SPEC.into(), spec_json.to_string()),
        KeyValue::new(schema::META_SPLIT.into(), split.as_str().to_string()),
    ];
    WriterProperties::builder()
        // Level 1: pixels barely compress, and zstd's higher levels cost
        // far more CPU than they save here.
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
        .set_max_row_group_size(rows_per_group)
        .set_key_value_metadata(Some(kv))
        // Min/max and dictionaries over raw pixel blobs are pure waste.
        .set_column_dictionary_enabled(pixels.clone(), false)
        .set_column_statistics_enabled(pixels, EnabledStatistics::None)
        .build()
}

fn to_record_batch(rows: &[Row], classes: &[String], split: Split) -> RecordBatch {
    let int =
        |f: &dyn Fn(&Row) -> u32| Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| f(r) as i32))) as ArrayRef;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.content_id.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.rel.as_str()))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| classes[r.label_index as usize].as_str()))),
        int(&|r| r.label_index),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|_| split.as_str()))),
        int(&|r| r.original.0),
        int(&|r| r.original.1),
        int(&|r| r.stored.width()),
        int(&|r| r.stored.height()),
        Arc::new(BinaryArray::from_iter_values(rows.iter().map(|r| r.stored.as_raw().as_slice()))),
    ];
    RecordBatch::try_new(schema::arrow_schema(), columns).expect("columns match the schema")
}
