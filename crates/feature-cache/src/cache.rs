//! The feature cache: content-addressed vectors in append-only Parquet
//! segments, one folder per [`CacheKey`].
//!
//! ```text
//! ROOT/                                   (default: contracts::cache_dir()/features)
//!   tiny-vgg-flatten-f32-3f2a…/           one folder per key (CacheKey::folder_name)
//!     key.json                            the key, for people and readers
//!     seg-<nanos>-<pid>-<n>.parquet       committed segments (content_id, embedding)
//!     rejected-<nanos>-<pid>-<n>.json     images whose vectors were refused, and why
//!     .seg-….parquet.<pid>.partial        a segment being written (never read)
//!     quarantine/                         files found unreadable or foreign, moved aside
//!   .locks/<folder>.lock                  shared while a process uses the folder,
//!                                         exclusive while it is compacted
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
//!
//! Every [`Store`] holds a shared lock on its folder for as long as it
//! lives; compaction, which deletes segments, runs only when it gets the
//! lock alone ([`Store::compact`] skips otherwise), so no process ever loses
//! a segment it has indexed. Vectors that are not finite, or do not fit the
//! key's dtype, are never stored: [`Store::reject`] records the image as
//! rejected instead, and the readers leave it out.

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
use atomic_file::Lock;
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
/// The folder of lock files, in the cache root (one `<folder>.lock` per key folder).
pub const LOCKS_DIR: &str = ".locks";
/// Name prefix of the files recording rejected images.
const REJECTED_PREFIX: &str = "rejected-";

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
        let lock = shared_lock(&dir)?;
        // What killed writers left (a segment or key.json half-written);
        // writers that still run keep theirs.
        atomic_file::remove_stale_partials(&dir, false);
        // Several processes may create the same new folder: each writes the
        // same key.json through a temporary of its own, renamed into place.
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
        Ok(Store::with_key(dir, key.clone(), Some(lock)))
    }
}

fn read_key_file(path: &Path) -> Result<CacheKey, CacheError> {
    Ok(contracts::read(path)?)
}

/// `<root>/.locks/<folder>.lock` for the key folder `dir`.
pub fn lock_path(dir: &Path) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let root = dir.parent().unwrap_or(Path::new("."));
    root.join(LOCKS_DIR).join(format!("{name}.lock"))
}

fn shared_lock(dir: &Path) -> Result<Lock, CacheError> {
    let path = lock_path(dir);
    Ok(Lock::shared(&path, &format!("the feature cache folder {} (being compacted)", dir.display()))?)
}

/// Why a vector cannot be stored as `dtype`: a value that is not finite,
/// or (f16) one beyond ±65504 that would be stored as infinity. `None`
/// when every value is fine.
pub fn vector_problem(values: &[f32], dtype: Dtype) -> Option<String> {
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Some(format!("the conv base gave {v} at value {i} of its vector (not a finite number)"));
    }
    if dtype == Dtype::F16 {
        let limit = f32::from(half::f16::MAX);
        if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.abs() > limit) {
            return Some(format!(
                "value {i} of its vector is {v:e}, beyond f16's largest ({limit}); store vectors as f32 \
                 (dtype = \"f32\", --dtype f32)"
            ));
        }
    }
    None
}

/// A `rejected-*.json` file: images whose vectors were refused, and why.
#[derive(Debug, Serialize, Deserialize)]
struct RejectionFile {
    /// The fingerprint of the key they were computed under.
    key: String,
    /// Content id -> reason.
    rejected: BTreeMap<String, String>,
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
    rejected: HashMap<String, String>,
    quarantined: Vec<Quarantined>,
}

impl Index {
    /// Whether the vector of `content_id` is stored.
    pub fn contains(&self, content_id: &str) -> bool {
        self.entries.contains_key(content_id)
    }
    /// Why the vector of `content_id` was refused, if it was (and none is stored).
    pub fn rejection(&self, content_id: &str) -> Option<&str> {
        match self.entries.contains_key(content_id) {
            true => None,
            false => self.rejected.get(content_id).map(String::as_str),
        }
    }
    /// Whether the cache has an answer for `content_id`: a vector or a rejection.
    pub fn covers(&self, content_id: &str) -> bool {
        self.entries.contains_key(content_id) || self.rejected.contains_key(content_id)
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
    /// Whether [`Store::compact`] has small segments to merge.
    pub fn wants_compaction(&self) -> bool {
        self.segments.iter().filter(|s| s.rows < SMALL_SEGMENT_ROWS).count() >= COMPACT_MIN_SEGMENTS
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
    /// Shared while this store lives: keeps compaction out.
    lock: Option<Lock>,
}

impl Store {
    fn with_key(dir: PathBuf, key: CacheKey, lock: Option<Lock>) -> Store {
        let schema = segment_schema(&key);
        Store { dir, key, schema, counter: AtomicU64::new(0), lock }
    }

    /// Opens an existing store folder (one holding `key.json`), for readers
    /// that were handed its path (`features.json` names it).
    pub fn open(dir: &Path) -> Result<Store, CacheError> {
        let key_file = dir.join(KEY_FILE);
        if !dir.is_dir() {
            return Err(CacheError::Cache {
                path: dir.to_path_buf(),
                reason: "the feature cache folder is gone (deleted or moved); run `features` again".into(),
            });
        }
        let lock = shared_lock(dir)?;
        let key = read_key_file(&key_file)?;
        Ok(Store::with_key(dir.to_path_buf(), key, Some(lock)))
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
        let (segments, rejections) = self.committed_files()?;
        for path in segments {
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
        for path in rejections {
            match self.read_rejections(&path) {
                Ok(None) => {}
                Ok(Some(file)) => index.rejected.extend(file.rejected),
                Err(reason) => index.quarantined.push(self.quarantine(&path, reason)),
            }
        }
        // Only those of dead processes: a live one may be about to rename its own.
        atomic_file::remove_stale_partials(&self.dir, false);
        Ok(index)
    }

    /// Committed segment files and rejection files, each sorted by name
    /// (oldest first).
    fn committed_files(&self) -> Result<(Vec<PathBuf>, Vec<PathBuf>), CacheError> {
        let entries = std::fs::read_dir(&self.dir).map_err(CacheError::io(&self.dir))?;
        let (mut segments, mut rejections) = (Vec::new(), Vec::new());
        for entry in entries {
            let entry = entry.map_err(CacheError::io(&self.dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file || name.starts_with('.') {
                continue;
            }
            if name.ends_with(".parquet") {
                segments.push(entry.path());
            } else if name.starts_with(REJECTED_PREFIX) && name.ends_with(".json") {
                rejections.push(entry.path());
            }
        }
        segments.sort();
        rejections.sort();
        Ok((segments, rejections))
    }

    /// Reads a rejection file; `Ok(None)` if it no longer exists,
    /// `Err(reason)` if it cannot be trusted.
    fn read_rejections(&self, path: &Path) -> Result<Option<RejectionFile>, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read: {e}")),
        };
        let file: RejectionFile =
            serde_json::from_str(&text).map_err(|e| format!("not a list of rejected images: {e}"))?;
        if file.key != self.key.fingerprint().0 {
            return Err(format!("belongs to another cache key ({}), not this folder's", file.key));
        }
        Ok(Some(file))
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

    /// Commits one segment holding `vectors` (one row per id, the key's
    /// length, stored in the key's dtype). Returns its path. Refuses the
    /// whole batch when any vector has a [`vector_problem`]: the caller
    /// sorts those out first and records them with [`Store::reject`].
    pub fn append(&self, ids: &[String], vectors: ArrayView2<'_, f32>) -> Result<PathBuf, CacheError> {
        if ids.len() != vectors.nrows() || vectors.ncols() != self.key.embedding_len {
            return Err(CacheError::Cache {
                path: self.dir.clone(),
                reason: format!(
                    "{} vectors of {} values for {} ids; this folder holds vectors of {}",
                    vectors.nrows(),
                    vectors.ncols(),
                    ids.len(),
                    self.key.embedding_len
                ),
            });
        }
        let values: Vec<f32> = vectors.iter().copied().collect();
        // Row by row in the one row-major copy (an empty vector has no problem).
        for (id, row) in ids.iter().zip(values.chunks(self.key.embedding_len.max(1))) {
            if let Some(problem) = vector_problem(row, self.key.dtype) {
                return Err(CacheError::Cache {
                    path: self.dir.clone(),
                    reason: format!("image {id}: {problem}; not stored"),
                });
            }
        }
        let batch = self.record_batch(ids.iter().map(String::as_str), &values)?;
        self.write_segment(&[batch], ids.len().max(1))
    }

    /// Records images whose vectors cannot be stored (content id, reason),
    /// so later runs neither recompute them nor expect their vectors.
    /// Returns the file written.
    pub fn reject(&self, rejected: &[(String, String)]) -> Result<PathBuf, CacheError> {
        let file = RejectionFile { key: self.key.fingerprint().0, rejected: rejected.iter().cloned().collect() };
        let json = serde_json::to_vec_pretty(&file).map_err(|e| CacheError::Cache {
            path: self.dir.clone(),
            reason: format!("cannot encode the rejected images: {e}"),
        })?;
        let path = self.dir.join(format!("{REJECTED_PREFIX}{}.json", self.unique_stem()));
        atomic_file::write(&path, &json).map_err(|e| CacheError::Io { path: e.path, source: e.source })?;
        Ok(path)
    }

    /// `<nanos>-<pid>-<n>`: unique across processes and calls, sorting by time.
    fn unique_stem(&self) -> String {
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let pid = std::process::id();
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:020}-{pid}-{n:06}")
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
        let path = self.dir.join(format!("seg-{}.parquet", self.unique_stem()));
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
            // Durable before it gets its name: a crash leaves a whole
            // segment or only a `.partial`, never a named empty file.
            let file = writer.into_inner().map_err(parquet)?;
            file.sync_all().map_err(CacheError::io(&partial))?;
            atomic_file::rename(&partial, &path).map_err(|e| CacheError::Io { path: e.path, source: e.source })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.map(|_| path)
    }

    fn writer_properties(&self, rows_per_group: usize) -> WriterProperties {
        // A key is strings, numbers and enums: serialising cannot fail.
        let key_json = serde_json::to_string(&self.key).unwrap_or_default();
        WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).unwrap_or_default()))
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
        let Some(flat) = out.as_slice_mut() else {
            return Err(CacheError::Cache {
                path: self.dir.clone(),
                reason: "internal: a non-contiguous array".into(),
            });
        };
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
    /// of files, and removes the `.partial` files of every other process.
    /// Only when no other [`Store`] of this folder is open, in any process
    /// (this one's shared lock is given up first): it returns `Ok(None)`
    /// without waiting otherwise. Safe against kills: merged files are
    /// committed before the small ones are removed, and duplicates are
    /// harmless. Returns the number of segments removed.
    pub fn compact(mut self) -> Result<Option<usize>, CacheError> {
        drop(self.lock.take());
        let Some(_alone) = Lock::try_exclusive(&lock_path(&self.dir))? else { return Ok(None) };
        // Holding the lock alone: every `.partial` here is a dead process's.
        atomic_file::remove_stale_partials(&self.dir, true);
        self.merge_small_segments().map(Some)
    }

    fn merge_small_segments(&self) -> Result<usize, CacheError> {
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
