//! Reading a dataset back in batches, one split at a time, without loading
//! it all: the API later stages use.

use std::collections::VecDeque;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::Int32Type;
use arrow_array::RecordBatch;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::arrow::ProjectionMask;

use contracts::dataset::DatasetInfo;
use contracts::Split;

use crate::schema::{col, INFO_FILE};

/// A dataset written by the ingest stage, opened for reading.
#[derive(Debug, Clone)]
pub struct Dataset {
    dir: PathBuf,
    info: DatasetInfo,
}

/// One image's row. `pixels` is empty when read without pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub content_id: String,
    pub path: String,
    pub label: String,
    pub label_index: u32,
    pub split: Split,
    /// Original size after EXIF orientation.
    pub width: u32,
    pub height: u32,
    /// Size of `pixels` (RGB8, row-major).
    pub stored_width: u32,
    pub stored_height: u32,
    pub pixels: Vec<u8>,
}

/// Why a dataset could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a dataset written by ingest: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("{}: {source}", path.display())]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error(transparent)]
    Contract(#[from] contracts::ContractError),
}

impl DatasetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DatasetError::Io { path: path.to_path_buf(), source }
    }
    pub(crate) fn parquet(path: &Path, source: parquet::errors::ParquetError) -> Self {
        DatasetError::Parquet { path: path.to_path_buf(), source }
    }
}

impl Dataset {
    /// Opens the dataset in `dir` (the folder holding `dataset.json`).
    pub fn open(dir: &Path) -> Result<Dataset, DatasetError> {
        let info: DatasetInfo = contracts::read(&dir.join(INFO_FILE))?;
        for shard in info.splits.values().flat_map(|s| &s.shards) {
            if !dir.join(shard).is_file() {
                return Err(DatasetError::Invalid {
                    path: dir.join(shard),
                    reason: "shard listed in dataset.json is missing".into(),
                });
            }
        }
        Ok(Dataset { dir: dir.to_path_buf(), info })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn info(&self) -> &DatasetInfo {
        &self.info
    }
    pub fn classes(&self) -> &[String] {
        &self.info.classes
    }
    pub fn rows(&self, split: Split) -> usize {
        self.info.split(split).rows
    }

    /// Iterates over a split in batches of `batch_size` rows (the last may be
    /// smaller), in stored order. Without `with_pixels` the pixel column is
    /// not even read, which makes listing content ids cheap.
    pub fn batches(&self, split: Split, batch_size: usize, with_pixels: bool) -> Batches {
        Batches {
            shards: self.info.split(split).shards.iter().map(|s| self.dir.join(s)).collect(),
            reader: None,
            buffer: VecDeque::new(),
            batch_size: batch_size.max(1),
            with_pixels,
            split,
            failed: false,
        }
    }

    /// The row groups of a split, in stored order: the units a reader can
    /// fetch alone (ingest bounds their rows), so a consumer can visit them
    /// in any order without reading the split before them.
    pub fn row_groups(&self, split: Split) -> Result<Vec<RowGroup>, DatasetError> {
        let mut groups = Vec::new();
        for shard in &self.info.split(split).shards {
            let path = self.dir.join(shard);
            let file = File::open(&path).map_err(|e| DatasetError::io(&path, e))?;
            let builder =
                ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DatasetError::parquet(&path, e))?;
            for (index, group) in builder.metadata().row_groups().iter().enumerate() {
                let rows = usize::try_from(group.num_rows()).map_err(|_| DatasetError::Invalid {
                    path: path.clone(),
                    reason: format!("row group {index} has a negative row count"),
                })?;
                groups.push(RowGroup { shard: path.clone(), index, rows, split });
            }
        }
        Ok(groups)
    }

    /// Every record of a split without pixels: ids, labels, sizes.
    pub fn index(&self, split: Split) -> Result<Vec<Record>, DatasetError> {
        let mut out = Vec::with_capacity(self.rows(split));
        for batch in self.batches(split, 4096, false) {
            out.extend(batch?);
        }
        Ok(out)
    }
}

/// One row group of one shard; see [`Dataset::row_groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowGroup {
    pub shard: PathBuf,
    /// Its position in the shard.
    pub index: usize,
    pub rows: usize,
    pub split: Split,
}

impl RowGroup {
    /// Reads this row group's records (pixels included when `with_pixels`).
    pub fn read(&self, with_pixels: bool) -> Result<Vec<Record>, DatasetError> {
        let path = &self.shard;
        let file = File::open(path).map_err(|e| DatasetError::io(path, e))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| DatasetError::parquet(path, e))?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> =
            (0..schema.num_columns()).filter(|&i| with_pixels || schema.column(i).name() != col::PIXELS).collect();
        let mask = ProjectionMask::roots(schema, wanted);
        let reader = builder
            .with_projection(mask)
            .with_row_groups(vec![self.index])
            .with_batch_size(self.rows.max(1))
            .build()
            .map_err(|e| DatasetError::parquet(path, e))?;
        let mut records = Vec::with_capacity(self.rows);
        for batch in reader {
            let batch = batch.map_err(|e| DatasetError::parquet(path, e.into()))?;
            records.extend(
                to_records(&batch, self.split)
                    .map_err(|reason| DatasetError::Invalid { path: path.clone(), reason })?,
            );
        }
        if records.len() != self.rows {
            return Err(DatasetError::Invalid {
                path: path.clone(),
                reason: format!(
                    "row group {} holds {} rows, its metadata says {}",
                    self.index,
                    records.len(),
                    self.rows
                ),
            });
        }
        Ok(records)
    }
}

/// Iterator over batches of records; see [`Dataset::batches`].
pub struct Batches {
    shards: VecDeque<PathBuf>,
    reader: Option<(PathBuf, ParquetRecordBatchReader)>,
    buffer: VecDeque<Record>,
    batch_size: usize,
    with_pixels: bool,
    split: Split,
    failed: bool,
}

impl Batches {
    fn open_next(&mut self) -> Result<bool, DatasetError> {
        let Some(path) = self.shards.pop_front() else { return Ok(false) };
        let parquet = |source| DatasetError::Parquet { path: path.clone(), source };
        let file = File::open(&path).map_err(|source| DatasetError::Io { path: path.clone(), source })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(parquet)?;
        let schema = builder.parquet_schema();
        let wanted: Vec<usize> =
            (0..schema.num_columns()).filter(|&i| self.with_pixels || schema.column(i).name() != col::PIXELS).collect();
        let mask = ProjectionMask::roots(schema, wanted);
        let reader = builder.with_projection(mask).with_batch_size(self.batch_size).build().map_err(parquet)?;
        self.reader = Some((path, reader));
        Ok(true)
    }

    fn fill(&mut self) -> Result<(), DatasetError> {
        while self.buffer.len() < self.batch_size {
            if self.reader.is_none() && !self.open_next()? {
                return Ok(());
            }
            let (path, reader) = self.reader.as_mut().expect("opened above");
            match reader.next() {
                Some(Ok(batch)) => {
                    let records = to_records(&batch, self.split)
                        .map_err(|reason| DatasetError::Invalid { path: path.clone(), reason })?;
                    self.buffer.extend(records);
                }
                Some(Err(e)) => return Err(DatasetError::Parquet { path: path.clone(), source: e.into() }),
                None => self.reader = None,
            }
        }
        Ok(())
    }
}

impl Iterator for Batches {
    type Item = Result<Vec<Record>, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Err(e) = self.fill() {
            self.failed = true;
            return Some(Err(e));
        }
        if self.buffer.is_empty() {
            return None;
        }
        let n = self.batch_size.min(self.buffer.len());
        Some(Ok(self.buffer.drain(..n).collect()))
    }
}

fn to_records(batch: &RecordBatch, split: Split) -> Result<Vec<Record>, String> {
    let column = |name: &str| batch.column_by_name(name).ok_or_else(|| format!("missing column '{name}'"));
    let strings = |name: &str| column(name).map(|c| c.as_string::<i32>().clone());
    let ints = |name: &str| column(name).map(|c| c.as_primitive::<Int32Type>().clone());
    let (ids, paths, labels) = (strings(col::CONTENT_ID)?, strings(col::PATH)?, strings(col::LABEL)?);
    let label_index = ints(col::LABEL_INDEX)?;
    let (w, h, sw, sh) = (ints(col::WIDTH)?, ints(col::HEIGHT)?, ints(col::STORED_WIDTH)?, ints(col::STORED_HEIGHT)?);
    let pixels = batch.column_by_name(col::PIXELS).map(|c| c.as_binary::<i32>().clone());
    Ok((0..batch.num_rows())
        .map(|i| Record {
            content_id: ids.value(i).to_string(),
            path: paths.value(i).to_string(),
            label: labels.value(i).to_string(),
            label_index: label_index.value(i) as u32,
            split,
            width: w.value(i) as u32,
            height: h.value(i) as u32,
            stored_width: sw.value(i) as u32,
            stored_height: sh.value(i) as u32,
            pixels: pixels.as_ref().map(|p| p.value(i).to_vec()).unwrap_or_default(),
        })
        .collect())
}
