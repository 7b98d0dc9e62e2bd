//! The feature cache: content-addressed vectors in append-only Parquet
//! segments, one folder per [`CacheKey`].
//!
//! ```text
//! ROOT/                                   (default: contracts::cache_dir()/features)
//!   tiny-vgg-flatten-f32-3f2a…/           one folder per key (CacheKey::folder_name)
//!     key.json                            the key, for people and readers
//!     seg-<nanos>-<pid>-<n>.parquet       committed segments (content_id, embedding)
//!     .seg-….parquet.partial              a segment being written (never read)
//!     quarantine/                         files found unreadable or foreign, moved aside
//! ```
//!
//! A segment is written to a hidden `.partial` sibling and renamed into
//! place once closed, so a reader sees whole segments only and a run killed
//! at any moment loses at most the batch it was writing. Every segment
//! names its key in its Parquet key-value metadata; a segment that fails to
//! open (truncated, corrupt), lacks that metadata (a foreign file) or names
//! another key is moved to `quarantine/`, reported, and its vectors are
//! computed again: never trusted. Several processes may append to one
//! folder at once: names are unique, and a content id found in several
//! segments is read from the first (the values are the same).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float16Type, Float32Type};
use arrow_array::{
    Array, ArrayRef, BooleanArray, FixedSizeListArray, Float16Array, Float32Array, RecordBatch, StringArray,
};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::filter::filter_record_batch;
use ndarray::{Array2, ArrayView2};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use contracts::features::{CacheKey, Dtype};

use crate::CacheError;

/// Version of the segment format; in every segment's metadata.
pub const SEGMENT_SCHEMA_VERSION: &str = "1";
/// Parquet key-value metadata: the segment format version.
pub const META_SCHEMA_VERSION: &str = "tl.features.schema_version";
/// Parquet key-value metadata: the [`CacheKey`] as JSON.
pub const META_KEY: &str = "tl.features.key";
/// Column: the image's content id (SHA-256 of its source file, hex).
pub const COL_CONTENT_ID: &str = "content_id";
/// Column: the vector, `FixedSizeList<Float32 | Float16>` of the key's length.
pub const COL_EMBEDDING: &str = "embedding";
/// The key of a folder, as JSON.
pub const KEY_FILE: &str = "key.json";
/// Where bad files are moved.
pub const QUARANTINE_DIR: &str = "quarantine";

/// Segments with fewer rows than this are merged by [`Store::compact`]
/// once there are [`COMPACT_MIN_SEGMENTS`] of them.
const SMALL_SEGMENT_ROWS: usize = 256;
const COMPACT_MIN_SEGMENTS: usize = 8;
/// Rows per merged segment, and per row group in it.
const MERGED_SEGMENT_ROWS: usize = 2048;
const MERGED_ROW_GROUP_ROWS: usize = 256;

/// The cache's root folder; vectors live in one [`Store`] per key below it.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    root: PathBuf,
}

impl FeatureCache {
    /// Opens (creating if needed) the cache rooted at `root`.
    pub fn open(root: &Path) -> Result<FeatureCache, CacheError> {
        std::fs::create_dir_all(root).map_err(CacheError::io(root))?;
        Ok(FeatureCache { root: root.to_path_buf() })
    }

    /// `contracts::cache_dir()/features`: shared by every dataset and experiment.
    pub fn default_root() -> Result<PathBuf, CacheError> {
        Ok(contracts::cache_dir()?.join("features"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The folder of `key`, created (with its `key.json`) if new.
    pub fn store(&self, key: &CacheKey) -> Result<Store, CacheError> {
        let dir = self.root.join(key.folder_name());
        std::fs::create_dir_all(&dir).map_err(CacheError::io(&dir))?;
        let key_file = dir.join(KEY_FILE);
        match read_key_file(&key_file) {
            Ok(existing) if existing.same_identity(key) => {}
            Ok(existing) => {
                return Err(CacheError::Cache {
                    path: key_file,
                    reason: format!(
                        "names another key ({}) than its folder name says; move the folder aside",
                        existing.fingerprint()
                    ),
                })
            }
            Err(_) => contracts::write(&key_file, key)?,
        }
        Ok(Store::with_key(dir, key.clone()))
    }
}

fn read_key_file(path: &Path) -> Result<CacheKey, CacheError> {
    Ok(contracts::read(path)?)
}

/// A file of a store that was not trusted: why, and where it went.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    pub file: PathBuf,
    /// Where it was moved (None if moving failed; it is ignored all the same).
    pub moved_to: Option<PathBuf>,
    pub reason: String,
}

impl std::fmt::Display for Quarantined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.reason)?;
        match &self.moved_to {
            Some(to) => write!(f, "; moved to {}; its vectors will be recomputed", to.display()),
            None => write!(f, "; ignored; its vectors will be recomputed"),
        }
    }
}

/// One committed segment.
#[derive(Debug, Clone)]
struct Segment {
    path: PathBuf,
    rows: usize,
    metadata: ArrowReaderMetadata,
}

/// What a store holds: which content ids, in which segment and row. Made
/// by [`Store::scan`], which reads only the `content_id` column.
#[derive(Debug, Clone, Default)]
pub struct Index {
    segments: Vec<Segment>,
    entries: HashMap<String, (u32, u32)>,
    quarantined: Vec<Quarantined>,
}

impl Index {
    pub fn contains(&self, content_id: &str) -> bool {
        self.entries.contains_key(content_id)
    }
    /// Distinct content ids held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    /// Committed segments that were read.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }
    /// Files found bad during the scan (already moved aside).
    pub fn quarantined(&self) -> &[Quarantined] {
        &self.quarantined
    }
}

/// The folder of one [`CacheKey`]: append segments, scan, read vectors.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    key: CacheKey,
    schema: SchemaRef,
    counter: AtomicU64,
}

impl Store {
    fn with_key(dir: PathBuf, key: CacheKey) -> Store {
        let schema = segment_schema(&key);
        Store { dir, key, schema, counter: AtomicU64::new(0) }
    }

    /// Opens an existing store folder (one holding `key.json`), for readers
    /// that were handed its path (`features.json` names it).
    pub fn open(dir: &Path) -> Result<Store, CacheError> {
        let key = read_key_file(&dir.join(KEY_FILE))?;
        Ok(Store::with_key(dir.to_path_buf(), key))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Lists and checks the committed segments, reading only their
    /// `content_id` column. Bad files are moved to `quarantine/` and listed
    /// in [`Index::quarantined`]; their vectors count as missing.
    pub fn scan(&self) -> Result<Index, CacheError> {
        let mut index = Index::default();
        for path in self.segment_files()? {
            match self.check_segment(&path) {
                Ok(None) => {} // vanished (merged by another process) meanwhile
                Ok(Some((segment, ids))) => {
                    let number = index.segments.len() as u32;
                    for (row, id) in ids.into_iter().enumerate() {
                        index.entries.entry(id).or_insert((number, row as u32));
                    }
                    index.segments.push(segment);
                }
                Err(reason) => index.quarantined.push(self.quarantine(&path, reason)),
            }
        }
        self.remove_stale_partials();
        Ok(index)
    }

    /// Committed segment files, sorted by name (oldest first).
    fn segment_files(&self) -> Result<Vec<PathBuf>, CacheError> {
        let entries = std::fs::read_dir(&self.dir).map_err(CacheError::io(&self.dir))?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(CacheError::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if is_file && name.ends_with(".parquet") && !name.starts_with('.') {
                files.push(entry.path());
            }
        }
        files.sort();
        Ok(files)
    }

    /// Opens a segment and reads its ids; `Ok(None)` if it no longer exists,
    /// `Err(reason)` if it cannot be trusted.
    #[allow(clippy::type_complexity)]
    fn check_segment(&self, path: &Path) -> Result<Option<(Segment, Vec<String>)>, String> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot open: {e}")),
        };
        let metadata = ArrowReaderMetadata::load(&file, ArrowReaderOptions::new().with_page_index(true))
            .map_err(|e| format!("not a readable Parquet file (truncated or corrupt): {e}"))?;
        let kv = metadata.metadata().file_metadata().key_value_metadata();
        let value = |key: &str| kv.and_then(|kv| kv.iter().find(|e| e.key == key)).and_then(|e| e.value.clone());
        let Some(key_json) = value(META_KEY) else {
            return Err(format!("not a feature-cache segment (no '{META_KEY}' metadata): a foreign file"));
        };
        if value(META_SCHEMA_VERSION).as_deref() != Some(SEGMENT_SCHEMA_VERSION) {
            return Err(format!(
                "segment format {:?}, this build reads {SEGMENT_SCHEMA_VERSION}",
                value(META_SCHEMA_VERSION).unwrap_or_default()
            ));
        }
        let key: CacheKey =
            serde_json::from_str(&key_json).map_err(|e| format!("unreadable '{META_KEY}' metadata: {e}"))?;
        if !key.same_identity(&self.key) {
            return Err(format!(
                "belongs to another cache key (model {}, {} {}, key {}), not this folder's ({})",
                key.model,
                key.pooling.name(),
                key.dtype,
                key.fingerprint().short(),
                self.key.fingerprint().short()
            ));
        }
        let fields = metadata.schema().fields();
        if fields.len() != 2
            || fields[0].name() != COL_CONTENT_ID
            || fields[0].data_type() != &DataType::Utf8
            || fields[1].name() != COL_EMBEDDING
            || fields[1].data_type() != self.schema.field(1).data_type()
        {
            return Err(format!("unexpected columns {:?}", metadata.schema()));
        }
        let rows = metadata.metadata().file_metadata().num_rows() as usize;
        let mask = ProjectionMask::roots(metadata.parquet_schema(), [0]);
        let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, metadata.clone())
            .with_projection(mask)
            .build()
            .map_err(|e| format!("cannot read content ids: {e}"))?;
        let mut ids = Vec::with_capacity(rows);
        for batch in reader {
            let batch = batch.map_err(|e| format!("cannot read content ids: {e}"))?;
            let column = batch.column(0).as_string::<i32>();
            if column.null_count() > 0 {
                return Err("null content ids".into());
            }
            ids.extend(column.iter().map(|id| id.unwrap_or_default().to_string()));
        }
        if ids.len() != rows {
            return Err(format!("holds {} ids, its footer says {rows} rows", ids.len()));
        }
        Ok(Some((Segment { path: path.to_path_buf(), rows, metadata }, ids)))
    }

    /// Moves a bad file to `quarantine/` (under a unique name).
    fn quarantine(&self, path: &Path, reason: String) -> Quarantined {
        let folder = self.dir.join(QUARANTINE_DIR);
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let mut target = folder.join(&name);
        let mut n = 1;
        while target.exists() {
            target = folder.join(format!("{name}.{n}"));
            n += 1;
        }
        let moved = std::fs::create_dir_all(&folder).and_then(|_| std::fs::rename(path, &target)).is_ok();
        Quarantined { file: path.to_path_buf(), moved_to: moved.then_some(target), reason }
    }

    /// Removes `.partial` files left by processes that no longer run.
    fn remove_stale_partials(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            // Segment temporaries only: the store writes `key.json` through
            // atomic_file, which removes its own temporary on failure.
            if !name.starts_with(".seg-") {
                continue;
            }
            let Some(pid) = atomic_file::partial_pid(&name) else { continue };
            if Path::new("/proc/self").exists() && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Commits one segment holding `vectors` (one row per id, the key's
    /// length, stored in the key's dtype). Returns its path.
    pub fn append(&self, ids: &[String], vectors: ArrayView2<'_, f32>) -> Result<PathBuf, CacheError> {
        assert_eq!(ids.len(), vectors.nrows(), "one vector per id");
        assert_eq!(vectors.ncols(), self.key.embedding_len, "vectors have the key's length");
        let values: Vec<f32> = vectors.iter().copied().collect();
        let batch = self.record_batch(ids.iter().map(String::as_str), &values)?;
        self.write_segment(&[batch], ids.len().max(1))
    }

    fn record_batch<'a>(&self, ids: impl Iterator<Item = &'a str>, values: &[f32]) -> Result<RecordBatch, CacheError> {
        let ids: ArrayRef = Arc::new(StringArray::from_iter_values(ids));
        let (item, values): (Arc<Field>, ArrayRef) = match self.key.dtype {
            Dtype::F32 => (item_field(DataType::Float32), Arc::new(Float32Array::from(values.to_vec()))),
            Dtype::F16 => (
                item_field(DataType::Float16),
                Arc::new(Float16Array::from(values.iter().map(|&v| half::f16::from_f32(v)).collect::<Vec<_>>())),
            ),
        };
        let arrow = |source| CacheError::Arrow { path: self.dir.clone(), what: "cannot build a segment", source };
        let list = FixedSizeListArray::try_new(item, self.key.embedding_len as i32, values, None).map_err(arrow)?;
        RecordBatch::try_new(self.schema.clone(), vec![ids, Arc::new(list)]).map_err(arrow)
    }

    fn write_segment(&self, batches: &[RecordBatch], rows_per_group: usize) -> Result<PathBuf, CacheError> {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let pid = std::process::id();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("seg-{nanos:020}-{pid}-{n:06}.parquet");
        let path = self.dir.join(&name);
        let partial = atomic_file::partial_path(&path);
        let result = (|| -> Result<(), CacheError> {
            let file = File::create(&partial).map_err(CacheError::io(&partial))?;
            let parquet = |source| CacheError::Parquet { path: partial.clone(), source };
            let mut writer =
                ArrowWriter::try_new(file, self.schema.clone(), Some(self.writer_properties(rows_per_group)))
                    .map_err(parquet)?;
            for batch in batches {
                writer.write(batch).map_err(parquet)?;
            }
            writer.close().map_err(parquet)?;
            std::fs::rename(&partial, &path).map_err(CacheError::io(&path))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.map(|_| path)
    }

    fn writer_properties(&self, rows_per_group: usize) -> WriterProperties {
        let key_json = serde_json::to_string(&self.key).expect("keys serialise");
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid level")))
            // Ids are unique and vectors are floats: dictionaries only cost time.
            .set_dictionary_enabled(false)
            .set_max_row_group_size(rows_per_group.max(1))
            .set_key_value_metadata(Some(vec![
                KeyValue::new(META_SCHEMA_VERSION.to_string(), SEGMENT_SCHEMA_VERSION.to_string()),
                KeyValue::new(META_KEY.to_string(), key_json),
            ]))
            .build()
    }

    /// The vectors of `ids`, in that order, as f32 (f16 is widened). Every
    /// id must be in `index`. A segment that fails to read is moved to
    /// `quarantine/` and reported as an error: run extraction again to
    /// recompute its vectors.
    pub fn read(&self, index: &Index, ids: &[&str]) -> Result<Array2<f32>, CacheError> {
        self.read_with(index, ids, true)
    }

    fn read_with(&self, index: &Index, ids: &[&str], may_rescan: bool) -> Result<Array2<f32>, CacheError> {
        let len = self.key.embedding_len;
        let mut out = Array2::<f32>::zeros((ids.len(), len));
        let mut missing = 0;
        // segment -> (row in segment -> output rows)
        let mut wanted: BTreeMap<u32, BTreeMap<u32, Vec<usize>>> = BTreeMap::new();
        for (i, id) in ids.iter().enumerate() {
            match index.entries.get(*id) {
                Some(&(segment, row)) => wanted.entry(segment).or_default().entry(row).or_default().push(i),
                None => missing += 1,
            }
        }
        if missing > 0 {
            return Err(CacheError::Missing {
                store: self.dir.clone(),
                missing,
                wanted: ids.len(),
                quarantined: index.quarantined.iter().map(|q| q.to_string()).collect(),
            });
        }
        let flat = out.as_slice_mut().expect("fresh arrays are contiguous");
        for (segment, rows) in wanted {
            let segment = &index.segments[segment as usize];
            match read_rows(segment, &rows, len, flat) {
                Ok(()) => {}
                // Merged into another segment by a concurrent compaction.
                Err(ReadFailure::Vanished) if may_rescan => return self.read_with(&self.scan()?, ids, false),
                Err(ReadFailure::Vanished) => {
                    return Err(CacheError::Cache {
                        path: segment.path.clone(),
                        reason: "vanished while being read (another process compacting the cache?); try again".into(),
                    })
                }
                Err(ReadFailure::Bad(reason)) => {
                    let q = self.quarantine(&segment.path, reason);
                    return Err(CacheError::Cache {
                        path: segment.path.clone(),
                        reason: format!("{q}; run `features` again"),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Merges small segments (those under 256 rows, once there are at least
    /// 8) into larger ones, so that many short runs do not leave thousands
    /// of files. Safe against kills: merged files are committed before the
    /// small ones are removed, and duplicates are harmless. Returns the
    /// number of segments removed.
    pub fn compact(&self) -> Result<usize, CacheError> {
        let index = self.scan()?;
        let small: Vec<&Segment> = index.segments.iter().filter(|s| s.rows < SMALL_SEGMENT_ROWS).collect();
        if small.len() < COMPACT_MIN_SEGMENTS {
            return Ok(0);
        }
        let mut seen: HashSet<String> = HashSet::new();
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let mut merged_sources: Vec<&Path> = Vec::new();
        for segment in &small {
            let file = match File::open(&segment.path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::Io { path: segment.path.clone(), source: e }),
            };
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, segment.metadata.clone())
                .build()
                .map_err(|source| CacheError::Parquet { path: segment.path.clone(), source })?;
            let arrow = |what, source| CacheError::Arrow { path: segment.path.clone(), what, source };
            for batch in reader {
                let batch = batch.map_err(|e| arrow("cannot read while compacting", e))?;
                // The first copy of each content id; later ones are duplicates.
                let ids = batch.column(0).as_string::<i32>();
                let first: BooleanArray =
                    ids.iter().map(|id| Some(seen.insert(id.unwrap_or_default().to_string()))).collect();
                let batch = filter_record_batch(&batch, &first).map_err(|e| arrow("cannot drop duplicates", e))?;
                pending_rows += batch.num_rows();
                pending.push(batch);
                if pending_rows >= MERGED_SEGMENT_ROWS {
                    self.write_segment(&std::mem::take(&mut pending), MERGED_ROW_GROUP_ROWS)?;
                    pending_rows = 0;
                }
            }
            merged_sources.push(&segment.path);
        }
        if pending_rows > 0 {
            self.write_segment(&pending, MERGED_ROW_GROUP_ROWS)?;
        }
        for path in &merged_sources {
            let _ = std::fs::remove_file(path);
        }
        Ok(merged_sources.len())
    }
}

enum ReadFailure {
    Vanished,
    Bad(String),
}

impl From<String> for ReadFailure {
    fn from(reason: String) -> Self {
        ReadFailure::Bad(reason)
    }
}

/// Reads rows of one segment (ascending keys) into the output rows given.
fn read_rows(
    segment: &Segment,
    rows: &BTreeMap<u32, Vec<usize>>,
    len: usize,
    out: &mut [f32],
) -> Result<(), ReadFailure> {
    let file = match File::open(&segment.path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadFailure::Vanished),
        Err(e) => return Err(ReadFailure::Bad(format!("cannot open: {e}"))),
    };
    let ranges = rows.keys().map(|&r| r as usize..r as usize + 1);
    let selection = RowSelection::from_consecutive_ranges(ranges, segment.rows);
    let mask = ProjectionMask::roots(segment.metadata.parquet_schema(), [1]);
    let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(file, segment.metadata.clone())
        .with_projection(mask)
        .with_row_selection(selection)
        .with_batch_size(256)
        .build()
        .map_err(|e| format!("cannot read vectors: {e}"))?;
    let mut targets = rows.values();
    for batch in reader {
        let batch = batch.map_err(|e| format!("cannot read vectors: {e}"))?;
        let list = batch.column(0).as_fixed_size_list();
        if list.value_length() as usize != len {
            return Err(ReadFailure::Bad(format!("vectors of {} values, expected {len}", list.value_length())));
        }
        let values = list.values();
        let offset = list.offset() * len;
        for i in 0..list.len() {
            let Some(target_rows) = targets.next() else {
                return Err(ReadFailure::Bad("more rows than selected".into()));
            };
            let start = offset + i * len;
            for &t in target_rows {
                let dst = &mut out[t * len..(t + 1) * len];
                match values.data_type() {
                    DataType::Float32 => {
                        dst.copy_from_slice(&values.as_primitive::<Float32Type>().values()[start..start + len])
                    }
                    DataType::Float16 => {
                        let src = &values.as_primitive::<Float16Type>().values()[start..start + len];
                        dst.iter_mut().zip(src).for_each(|(d, s)| *d = s.to_f32());
                    }
                    other => return Err(ReadFailure::Bad(format!("vectors of type {other}"))),
                }
            }
        }
    }
    if targets.next().is_some() {
        return Err(ReadFailure::Bad("fewer rows than its footer promises".into()));
    }
    Ok(())
}

fn item_field(data_type: DataType) -> Arc<Field> {
    Arc::new(Field::new("item", data_type, false))
}

/// The Arrow schema of a segment of `key`.
pub fn segment_schema(key: &CacheKey) -> SchemaRef {
    let item = match key.dtype {
        Dtype::F32 => DataType::Float32,
        Dtype::F16 => DataType::Float16,
    };
    Arc::new(Schema::new(vec![
        Field::new(COL_CONTENT_ID, DataType::Utf8, false),
        Field::new(COL_EMBEDDING, DataType::FixedSizeList(item_field(item), key.embedding_len as i32), false),
    ]))
}
