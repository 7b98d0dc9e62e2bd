//! Ingestion: an image folder (one sub-folder per class) or a CSV manifest
//! becomes a self-contained, sharded Parquet dataset.
//!
//! The flow is two passes over the files, in one deterministic order
//! (sorted by class, then relative path):
//! 1. read and hash every file (SHA-256 = content id) to find duplicates and
//!    label conflicts before anything is written;
//! 2. in chunks, decode + orient + resize in parallel (rayon), then append
//!    the rows, in order, to one Parquet shard series per split.
//!
//! Output goes to a temporary folder renamed into place at the end, so an
//! interrupted run leaves the previous dataset (or nothing) behind, never a
//! half-written one. Bad files never stop the run: they are listed in
//! `rejects.csv` with a reason.

mod discover;
pub mod source;
mod split;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use progress::Progress;
use rayon::prelude::*;
use serde::Serialize;
use spec::{DatasetSource, DatasetSpec};

pub use split::{assign as assign_split, Split};

use contracts::dataset::{DatasetInfo, INFO_FILE, REJECTS_FILE};
use dataset::{DatasetWriter, Limits, Row, SplitInfo};
use discover::{Candidate, Discovery};

/// Why a file was left out of the dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectKind {
    EmptyFile,
    Unreadable,
    SymlinkLoop,
    NotAnImage,
    Corrupt,
    TooLarge,
    /// Same bytes as another file in the same class: stored once.
    Duplicate,
    /// Same bytes under two or more classes: all copies excluded.
    LabelConflict,
}

impl From<imaging::Failure> for RejectKind {
    fn from(failure: imaging::Failure) -> Self {
        match failure {
            imaging::Failure::Unreadable => RejectKind::Unreadable,
            imaging::Failure::NotAnImage => RejectKind::NotAnImage,
            imaging::Failure::Corrupt => RejectKind::Corrupt,
            imaging::Failure::TooLarge => RejectKind::TooLarge,
        }
    }
}

impl RejectKind {
    /// Duplicates are expected housekeeping; everything else means a file
    /// the user gave us was not used (what `--strict` fails on).
    pub fn is_loss(self) -> bool {
        self != RejectKind::Duplicate
    }
}

/// A file left out, with the reason, as listed in `rejects.csv`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reject {
    pub path: String,
    pub kind: RejectKind,
    pub reason: String,
}

impl Reject {
    fn new(path: String, kind: RejectKind, reason: impl Into<String>) -> Self {
        Reject { path, kind, reason: reason.into() }
    }
}

/// A failure that stops ingestion: the input as a whole is unusable.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("dataset root {0} does not exist")]
    RootMissing(PathBuf),
    #[error("dataset root {0} is not a folder (expected one sub-folder per class)")]
    NotAFolder(PathBuf),
    #[error("{root}: need at least two classes, found {}: {found:?}", found.len())]
    TooFewClasses { root: PathBuf, found: Vec<String> },
    #[error("class folder {0} holds no images")]
    EmptyClass(PathBuf),
    #[error("manifest {path} line {line}: {reason}")]
    Manifest { path: PathBuf, line: u64, reason: String },
    #[error("manifest {path} line {line}: {source}")]
    ManifestCsv {
        path: PathBuf,
        line: u64,
        #[source]
        source: csv::Error,
    },
    /// Not a source: the message says it all, so a chain prints it once.
    #[error("invalid dataset spec: {0}")]
    Spec(spec::SpecError),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the dataset: {0}")]
    Dataset(#[from] dataset::DatasetError),
    #[error(transparent)]
    Contract(#[from] contracts::ContractError),
}

impl IngestError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        IngestError::Io { path: path.to_path_buf(), source }
    }
}

/// Tuning that does not change the output's content.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Images decoded per parallel chunk; bounds memory.
    pub chunk_size: usize,
    /// Rows per Parquet row group (a row group is held in memory while written).
    pub rows_per_group: usize,
    /// Rows per shard file.
    pub rows_per_shard: usize,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions { chunk_size: 64, rows_per_group: 64, rows_per_shard: 2048 }
    }
}

/// What a run did; also written to `dataset.json` (as [`DatasetInfo`]) and
/// `rejects.csv`.
#[derive(Debug, Clone)]
pub struct IngestSummary {
    pub info: DatasetInfo,
    pub rejects: Vec<Reject>,
    pub out_dir: PathBuf,
}

impl IngestSummary {
    /// Files given to us that did not make it into the dataset, duplicates aside.
    pub fn losses(&self) -> usize {
        self.rejects.iter().filter(|r| r.kind.is_loss()).count()
    }
}

/// Builds the dataset described by `spec` into `out_dir` (replaced whole).
pub fn ingest(
    spec: &DatasetSpec,
    out_dir: &Path,
    opts: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestSummary, IngestError> {
    spec.validate().map_err(IngestError::Spec)?;
    let spec = resolve(spec)?;
    let mut found = discover::discover(&spec.source, spec.include_hidden)?;
    let mut rejects = std::mem::take(&mut found.rejects);

    // Pass 1: content ids, so duplicates and label conflicts are known
    // before anything is written.
    let hashed = hash_candidates(&found.candidates, &mut rejects, progress);
    let kept = drop_duplicates(hashed, &found.classes, &mut rejects);

    // Pass 2: decode and write, into a temporary folder.
    let partial = fresh_partial_dir(out_dir)?;
    let spec_json = serde_json::to_string(&spec).expect("specs serialise");
    let limits = Limits { rows_per_shard: opts.rows_per_shard.max(1), rows_per_group: opts.rows_per_group.max(1) };
    let mut writer = DatasetWriter::new(&partial, found.classes.clone(), spec_json, limits);
    rejects.extend(decode_and_write(&kept, &spec, &mut writer, opts.chunk_size.max(1), progress)?);
    let (splits, fingerprint) = writer.finish()?;
    rejects.sort_by(|a, b| a.path.cmp(&b.path).then(a.reason.cmp(&b.reason)));

    let info = dataset_info(spec, &found, splits, fingerprint, &rejects);
    contracts::write(&partial.join(INFO_FILE), &info)?;
    write_rejects(&partial.join(REJECTS_FILE), &rejects)?;
    replace_dir(&partial, out_dir)?;
    Ok(IngestSummary { info, rejects, out_dir: out_dir.to_path_buf() })
}

/// Reads and hashes every candidate in parallel; returns those that read,
/// with their content ids, in candidate order. The others go to `rejects`.
fn hash_candidates<'a>(
    candidates: &'a [Candidate],
    rejects: &mut Vec<Reject>,
    progress: &dyn Progress,
) -> Vec<(&'a Candidate, String)> {
    progress.start("hashing", candidates.len() as u64);
    let hashed: Vec<Result<String, Reject>> = candidates
        .par_iter()
        .map(|c| {
            let id = read_file(c).map(|bytes| spec::sha256_hex(&bytes));
            progress.advance(1);
            id
        })
        .collect();
    progress.finish();
    let mut kept = Vec::new();
    for (candidate, id) in candidates.iter().zip(hashed) {
        match id {
            Ok(id) => kept.push((candidate, id)),
            Err(reject) => rejects.push(reject),
        }
    }
    kept
}

/// The temporary folder the dataset is built in, emptied of any leftover
/// from an interrupted run.
fn fresh_partial_dir(out_dir: &Path) -> Result<PathBuf, IngestError> {
    let partial = partial_dir(out_dir);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| IngestError::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| IngestError::io(&partial, e))?;
    Ok(partial)
}

/// Decodes the kept files, `chunk_size` at a time in parallel, and pushes
/// the rows to `writer` in order; returns the files that failed to decode.
fn decode_and_write(
    kept: &[(&Candidate, String)],
    spec: &DatasetSpec,
    writer: &mut DatasetWriter,
    chunk_size: usize,
    progress: &dyn Progress,
) -> Result<Vec<Reject>, IngestError> {
    progress.start("decoding", kept.len() as u64);
    // Decoding (parallel) and Parquet encoding (this thread's consumer) overlap:
    // one chunk is compressed while the next is decoded.
    let (tx, rx) = mpsc::sync_channel::<Vec<Result<Row, Reject>>>(1);
    let decode_rejects = std::thread::scope(|scope| -> Result<Vec<Reject>, IngestError> {
        scope.spawn(move || {
            for chunk in kept.chunks(chunk_size) {
                let rows: Vec<Result<Row, Reject>> = chunk
                    .par_iter()
                    .map(|(c, id)| {
                        let row = decode_row(c, id, spec);
                        progress.advance(1);
                        row
                    })
                    .collect();
                if tx.send(rows).is_err() {
                    return; // the writer failed; it reports why
                }
            }
        });
        let mut decode_rejects = Vec::new();
        for rows in rx {
            for row in rows {
                match row {
                    Ok(row) => writer.push(row)?,
                    Err(reject) => decode_rejects.push(reject),
                }
            }
        }
        Ok(decode_rejects)
    })?;
    progress.finish();
    Ok(decode_rejects)
}

/// The record written as `dataset.json`: what was read, what was kept per
/// split, and why the rest was not.
fn dataset_info(
    spec: DatasetSpec,
    found: &Discovery,
    splits: BTreeMap<Split, SplitInfo>,
    fingerprint: String,
    rejects: &[Reject],
) -> DatasetInfo {
    let count = |f: &dyn Fn(RejectKind) -> bool| rejects.iter().filter(|r| f(r.kind)).count();
    let mut info = DatasetInfo {
        name: spec.name.clone(),
        classes: found.classes.clone(),
        fingerprint,
        splits,
        rejected: count(&|k| k != RejectKind::Duplicate && k != RejectKind::LabelConflict),
        duplicates: count(&|k| k == RejectKind::Duplicate),
        conflicts: count(&|k| k == RejectKind::LabelConflict),
        ignored: found.ignored,
        warnings: Vec::new(),
        spec,
    };
    info.warnings = small_class_warnings(&info);
    info
}

/// Makes the spec's paths absolute, so the recorded spec says exactly what
/// was read.
fn resolve(spec: &DatasetSpec) -> Result<DatasetSpec, IngestError> {
    let absolute = |p: &str| -> Result<String, IngestError> {
        let path = Path::new(p);
        let abs = std::path::absolute(path).map_err(|e| IngestError::io(path, e))?;
        Ok(abs.to_string_lossy().into_owned())
    };
    let mut spec = spec.clone();
    spec.source = match &spec.source {
        DatasetSource::Root(p) => DatasetSource::Root(absolute(p)?),
        DatasetSource::Manifest(p) => DatasetSource::Manifest(absolute(p)?),
    };
    Ok(spec)
}

fn read_file(c: &Candidate) -> Result<Vec<u8>, Reject> {
    match std::fs::read(&c.abs) {
        Ok(bytes) if bytes.is_empty() => Err(Reject::new(c.rel.clone(), RejectKind::EmptyFile, "empty file (0 bytes)")),
        Ok(bytes) => Ok(bytes),
        Err(e) => Err(Reject::new(c.rel.clone(), RejectKind::Unreadable, format!("cannot read: {e}"))),
    }
}

fn decode_row(c: &Candidate, content_id: &str, spec: &DatasetSpec) -> Result<Row, Reject> {
    let bytes = read_file(c)?;
    if spec::sha256_hex(&bytes) != content_id {
        return Err(Reject::new(c.rel.clone(), RejectKind::Unreadable, "file changed while being ingested"));
    }
    let decoded = imaging::decode(&bytes, spec.max_pixels, spec.size, spec.filter)
        .map_err(|(failure, reason)| Reject::new(c.rel.clone(), RejectKind::from(failure), reason))?;
    Ok(Row {
        content_id: content_id.to_string(),
        rel: c.rel.clone(),
        label_index: c.label_index,
        split: split::assign(spec.seed, content_id, &spec.split),
        original: decoded.original,
        stored: decoded.stored,
    })
}

/// Keeps the first file (in row order) of each content id within a class;
/// excludes every copy of an id that appears under more than one class.
fn drop_duplicates<'a>(
    hashed: Vec<(&'a Candidate, String)>,
    classes: &[String],
    rejects: &mut Vec<Reject>,
) -> Vec<(&'a Candidate, String)> {
    let mut by_id: HashMap<&str, Vec<&Candidate>> = HashMap::new();
    for (c, id) in &hashed {
        by_id.entry(id.as_str()).or_default().push(c);
    }
    let mut conflicted = std::collections::HashSet::new();
    let mut first_of: HashMap<&str, &Candidate> = HashMap::new();
    for (id, copies) in &by_id {
        if copies.iter().any(|c| c.label_index != copies[0].label_index) {
            conflicted.insert(*id);
        } else {
            first_of.insert(*id, copies[0]);
        }
    }
    let mut kept = Vec::new();
    for (c, id) in hashed.iter() {
        if conflicted.contains(id.as_str()) {
            let others: Vec<String> = by_id[id.as_str()]
                .iter()
                .filter(|o| o.rel != c.rel)
                .map(|o| format!("{} (class {})", o.rel, classes[o.label_index as usize]))
                .collect();
            rejects.push(Reject::new(
                c.rel.clone(),
                RejectKind::LabelConflict,
                format!("label conflict: same bytes as {}; excluded", others.join(", ")),
            ));
        } else if first_of[id.as_str()].rel != c.rel {
            let first = &first_of[id.as_str()].rel;
            rejects.push(Reject::new(
                c.rel.clone(),
                RejectKind::Duplicate,
                format!("duplicate of {first}; stored once"),
            ));
        } else {
            kept.push((*c, id.clone()));
        }
    }
    kept
}

fn small_class_warnings(info: &DatasetInfo) -> Vec<String> {
    let ratios = &info.spec.split;
    let mut warnings = Vec::new();
    for (ci, class) in info.classes.iter().enumerate() {
        let total: usize = info.splits.values().map(|s| s.per_class[ci]).sum();
        if total == 0 {
            warnings.push(format!("class '{class}' has no usable images (all rejected)"));
            continue;
        }
        for (split, ratio) in
            [(Split::Train, ratios.train), (Split::Validation, ratios.validation), (Split::Test, ratios.test)]
        {
            if ratio > 0.0 && info.split(split).per_class.get(ci).copied().unwrap_or(0) == 0 {
                warnings.push(format!(
                    "class '{class}' has {total} images and none in the {split} split; add images or change the ratios"
                ));
            }
        }
    }
    warnings
}

fn write_rejects(path: &Path, rejects: &[Reject]) -> Result<(), IngestError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| IngestError::io(path, e.into()))?;
    w.write_record(["path", "kind", "reason"]).map_err(|e| IngestError::io(path, e.into()))?;
    for r in rejects {
        let kind = serde_json::to_value(r.kind).expect("kind serialises");
        w.write_record([r.path.as_str(), kind.as_str().unwrap_or(""), r.reason.as_str()])
            .map_err(|e| IngestError::io(path, e.into()))?;
    }
    w.flush().map_err(|e| IngestError::io(path, e))
}

fn partial_dir(out_dir: &Path) -> PathBuf {
    sibling(out_dir, "partial")
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
    dir.with_file_name(format!(".{name}.{suffix}"))
}

/// Moves the finished `partial` folder to `out_dir`, replacing what was there.
fn replace_dir(partial: &Path, out_dir: &Path) -> Result<(), IngestError> {
    if out_dir.exists() {
        let old = sibling(out_dir, "old");
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| IngestError::io(&old, e))?;
        }
        std::fs::rename(out_dir, &old).map_err(|e| IngestError::io(out_dir, e))?;
        std::fs::rename(partial, out_dir).map_err(|e| IngestError::io(out_dir, e))?;
        std::fs::remove_dir_all(&old).map_err(|e| IngestError::io(&old, e))?;
    } else {
        std::fs::rename(partial, out_dir).map_err(|e| IngestError::io(out_dir, e))?;
    }
    Ok(())
}
