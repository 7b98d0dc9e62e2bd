//! Ingestion: an image folder (one sub-folder per class) or a CSV manifest
//! becomes a self-contained, sharded Parquet dataset.
//!
//! The flow is two passes over the files, in one deterministic order
//! (sorted by class, then relative path):
//! 1. read and hash every file (SHA-256 = content id) to find duplicates and
//!    label conflicts before anything is written;
//! 2. assign the splits: stratified per class, by rank of a seeded hash of
//!    the content id (`split`), from the ids alone (one byte kept an image);
//! 3. in chunks, decode + orient + resize in parallel (rayon), then append
//!    the rows, in order, to one Parquet shard series per split.
//!
//! Output goes to this process's staging folder, synced and renamed into
//! place at the end, under an exclusive lock per output folder, so an
//! interrupted run leaves the previous dataset (or nothing) behind, never a
//! half-written one, and two runs to one output take turns. Bad files never stop the run: they are listed in
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

pub use split::{assign as assign_splits, class_sizes as class_split_sizes, moved_when_adding, Split, SMALL_CLASS};

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
    /// A symlink whose target does not exist.
    DanglingLink,
    /// A FIFO, socket, device or folder named like an image (also through a
    /// symlink, such as a link to `/dev/zero`): never opened.
    NotAFile,
    /// A file or folder name that is not valid UTF-8: the dataset records
    /// paths as text, so it would record a different path.
    NonUtf8Name,
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
            imaging::Failure::NotAFile => RejectKind::NotAFile,
        }
    }
}

impl RejectKind {
    /// The kind as `rejects.csv` writes it (`too-large`, `symlink-loop`, …).
    pub fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
    }

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
    /// A spec file that does not parse or validate: the message names it.
    #[error(transparent)]
    SpecFile(#[from] spec::FileError),
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
    #[error(transparent)]
    Lock(#[from] atomic_file::LockError),
    #[error(transparent)]
    Publish(#[from] atomic_file::WriteError),
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
///
/// Relative paths in `spec` are taken from the working folder; a spec read
/// from a file should come through [`source::read_spec`], which makes them
/// relative to the file. Two runs to one `out_dir` take turns: each holds
/// an exclusive lock on [`lock_path`] (the second says it waits), builds in
/// its own staging folder (`atomic_file::partial_path`) and publishes it
/// whole; staging folders left by killed runs are removed first.
pub fn ingest(
    spec: &DatasetSpec,
    out_dir: &Path,
    opts: &IngestOptions,
    progress: &dyn Progress,
) -> Result<IngestSummary, IngestError> {
    spec.validate().map_err(IngestError::Spec)?;
    let spec = resolve(spec)?;
    let out_dir = &std::path::absolute(out_dir).map_err(|e| IngestError::io(out_dir, e))?;
    if let Some(parent) = out_dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| IngestError::io(parent, e))?;
    }
    let _lock = atomic_file::Lock::exclusive(&lock_path(out_dir), &format!("the dataset {}", out_dir.display()))?;
    remove_stale_staging(out_dir);
    let mut found = discover::discover(&spec.source, spec.include_hidden)?;
    let mut rejects = std::mem::take(&mut found.rejects);

    // Pass 1: content ids, so duplicates and label conflicts are known
    // before anything is written.
    let hashed = hash_candidates(&found.candidates, spec.max_pixels, &mut rejects, progress);
    let kept = drop_duplicates(hashed, &found.classes, &mut rejects);
    let ids: Vec<(u32, &str)> = kept.iter().map(|(c, id)| (c.label_index, id.as_str())).collect();
    let splits = split::assign(spec.seed, &ids, &spec.split);
    drop(ids);
    let kept: Vec<(&Candidate, String, Split)> =
        kept.into_iter().zip(splits).map(|((c, id), split)| (c, id, split)).collect();

    // Pass 2: decode and write, into this process's staging folder.
    let partial = fresh_partial_dir(out_dir)?;
    let spec_json =
        serde_json::to_string(&spec).map_err(|e| IngestError::Spec(spec::SpecError::Invalid(e.to_string())))?;
    let limits = Limits { rows_per_shard: opts.rows_per_shard.max(1), rows_per_group: opts.rows_per_group.max(1) };
    let mut writer = DatasetWriter::new(&partial, found.classes.clone(), spec_json, limits);
    let failed = decode_and_write(&kept, &spec, &mut writer, opts.chunk_size.max(1), progress)?;
    let failed_per_class = failed_per_class(&kept, &failed, found.classes.len());
    rejects.extend(failed);
    let (splits, fingerprint) = writer.finish()?;
    rejects.sort_by(|a, b| a.path.cmp(&b.path).then(a.reason.cmp(&b.reason)));

    let mut info = dataset_info(spec, &found, splits, fingerprint, &rejects);
    info.warnings.extend(decode_failure_warnings(&info.classes, &failed_per_class));
    contracts::write(&partial.join(INFO_FILE), &info)?;
    write_rejects(&partial.join(REJECTS_FILE), &rejects)?;
    replace_dir(&partial, out_dir)?;
    Ok(IngestSummary { info, rejects, out_dir: out_dir.to_path_buf() })
}

/// The lock file two ingest runs to `out_dir` take turns on: the hidden
/// sibling `.<name>.lock`, never deleted (see `atomic_file::Lock`).
pub fn lock_path(out_dir: &Path) -> PathBuf {
    sibling(out_dir, ".", "lock")
}

/// Reads and hashes every candidate in parallel; returns those that read,
/// with their content ids, in candidate order. The others go to `rejects`.
fn hash_candidates<'a>(
    candidates: &'a [Candidate],
    max_pixels: u64,
    rejects: &mut Vec<Reject>,
    progress: &dyn Progress,
) -> Vec<(&'a Candidate, String)> {
    progress.start("hashing", candidates.len() as u64);
    let hashed: Vec<Result<String, Reject>> = candidates
        .par_iter()
        .map(|c| {
            let id = read_file(c, max_pixels).map(|bytes| spec::sha256_hex(&bytes));
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

/// This process's staging folder for `out_dir` (`.<name>.<pid>.partial`),
/// emptied of any leftover from an earlier process with the same id.
fn fresh_partial_dir(out_dir: &Path) -> Result<PathBuf, IngestError> {
    let partial = atomic_file::partial_path(out_dir);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|e| IngestError::io(&partial, e))?;
    }
    std::fs::create_dir_all(&partial).map_err(|e| IngestError::io(&partial, e))?;
    Ok(partial)
}

/// Removes what killed runs left beside `out_dir`: staging folders and
/// replaced datasets (`.<name>.<pid>.partial`, `.<name>.old.<pid>.partial`)
/// and the fixed-name `.<name>.partial` / `.<name>.old` folders of earlier
/// versions. Only for the lock holder: no other process writes these then.
/// Best effort: what cannot be removed stays, and is tried again next run.
fn remove_stale_staging(out_dir: &Path) {
    let (Some(parent), Some(name)) = (out_dir.parent(), out_dir.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    let own = std::process::id();
    let legacy = [format!(".{name}.partial"), format!(".{name}.old")];
    for entry in entries.flatten() {
        let Some(file_name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        // `<pid>` or `old.<pid>` between `.<name>.` and `.partial`, nothing
        // else: `.<name>.v2.<pid>.partial` belongs to another output.
        let ours = file_name
            .strip_prefix(&format!(".{name}."))
            .and_then(|rest| rest.strip_suffix(".partial"))
            .map(|middle| middle.strip_prefix("old.").unwrap_or(middle))
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| pid != own);
        if ours || legacy.contains(&file_name) {
            let path = entry.path();
            let removed = match entry.file_type() {
                Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
            if removed.is_ok() {
                eprintln!("removed {} (left by an interrupted ingest run)", path.display());
            }
        }
    }
}

/// Decodes the kept files, `chunk_size` at a time in parallel, and pushes
/// the rows to `writer` in order; returns the files that failed to decode.
fn decode_and_write(
    kept: &[(&Candidate, String, Split)],
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
                    .map(|(c, id, split)| {
                        let row = decode_row(c, id, *split, spec);
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
        // The working folder joined in front may not be UTF-8: refuse rather
        // than record a different path.
        abs.to_str().map(str::to_owned).ok_or_else(|| {
            IngestError::Spec(spec::SpecError::Invalid(format!("{}: the path is not valid UTF-8", abs.display())))
        })
    };
    let mut spec = spec.clone();
    spec.source = match &spec.source {
        DatasetSource::Root(p) => DatasetSource::Root(absolute(p)?),
        DatasetSource::Manifest(p) => DatasetSource::Manifest(absolute(p)?),
    };
    Ok(spec)
}

/// Reads a candidate's bytes, after checking, before opening, that it is a
/// regular file (after following symlinks) within the byte limit for
/// `max_pixels` (`imaging::check_file`): FIFOs, sockets, devices (a link to
/// `/dev/zero`), dangling links and loops are rejects by name, never read.
/// The read is bounded too, in case the file is swapped or grows after the
/// check.
pub(crate) fn read_file(c: &Candidate, max_pixels: u64) -> Result<Vec<u8>, Reject> {
    use std::io::Read;
    let max_bytes = imaging::max_file_bytes(max_pixels);
    let refused = |(failure, reason): imaging::DecodeError| Reject::new(c.rel.clone(), failure.into(), reason);
    let meta = std::fs::metadata(&c.abs).map_err(|e| discover::io_reject(c.rel.clone(), &c.abs, &e))?;
    imaging::check_file(&meta, max_bytes).map_err(refused)?;
    let unreadable =
        |e: std::io::Error| Reject::new(c.rel.clone(), RejectKind::Unreadable, format!("cannot read: {e}"));
    let file = std::fs::File::open(&c.abs).map_err(unreadable)?;
    let opened = file.metadata().map_err(unreadable)?;
    imaging::check_file(&opened, max_bytes).map_err(refused)?;
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(unreadable)?;
    if bytes.len() as u64 > max_bytes {
        let reason = format!("file too large: grew past {max_bytes} bytes while being read; not used");
        return Err(Reject::new(c.rel.clone(), RejectKind::TooLarge, reason));
    }
    if bytes.is_empty() {
        return Err(Reject::new(c.rel.clone(), RejectKind::EmptyFile, "empty file (0 bytes)"));
    }
    Ok(bytes)
}

fn decode_row(c: &Candidate, content_id: &str, split: Split, spec: &DatasetSpec) -> Result<Row, Reject> {
    let bytes = read_file(c, spec.max_pixels)?;
    if spec::sha256_hex(&bytes) != content_id {
        return Err(Reject::new(c.rel.clone(), RejectKind::Unreadable, "file changed while being ingested"));
    }
    let decoded = imaging::decode(&bytes, spec.max_pixels, spec.size, spec.filter)
        .map_err(|(failure, reason)| Reject::new(c.rel.clone(), RejectKind::from(failure), reason))?;
    Ok(Row {
        content_id: content_id.to_string(),
        rel: c.rel.clone(),
        label_index: c.label_index,
        split,
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

/// Says what was done with each class that is not in every split its
/// ratio asks for: a small class (under [`SMALL_CLASS`] images) by the
/// stated rule, any other because files failed to decode after assignment.
fn small_class_warnings(info: &DatasetInfo) -> Vec<String> {
    let ratios = &info.spec.split;
    let mut warnings = Vec::new();
    for (ci, class) in info.classes.iter().enumerate() {
        let count = |split: Split| info.split(split).per_class.get(ci).copied().unwrap_or(0);
        let total: usize = Split::ALL.iter().map(|&s| count(s)).sum();
        if total == 0 {
            warnings.push(format!("class '{class}' has no usable images (all rejected)"));
            continue;
        }
        let missing: Vec<&str> =
            [(Split::Train, ratios.train), (Split::Validation, ratios.validation), (Split::Test, ratios.test)]
                .into_iter()
                .filter(|&(split, ratio)| ratio > 0.0 && count(split) == 0)
                .map(|(split, _)| split.as_str())
                .collect();
        if missing.is_empty() {
            continue;
        }
        let placed: Vec<String> =
            Split::ALL.iter().filter(|&&s| count(s) > 0).map(|&s| format!("{} in {s}", count(s))).collect();
        let why = if total < SMALL_CLASS {
            format!("classes under {SMALL_CLASS} images go to train, then test, then validation")
        } else {
            "add images or change the ratios".to_string()
        };
        warnings.push(format!(
            "class '{class}' has {total} image(s): {}, none in {} ({why})",
            placed.join(", "),
            missing.join(" or ")
        ));
    }
    warnings
}

/// Files per class that were assigned a split but failed to decode.
fn failed_per_class(kept: &[(&Candidate, String, Split)], failed: &[Reject], classes: usize) -> Vec<usize> {
    let failed: std::collections::HashSet<&str> = failed.iter().map(|r| r.path.as_str()).collect();
    let mut per_class = vec![0; classes];
    for (c, _, _) in kept {
        if failed.contains(c.rel.as_str()) {
            if let Some(n) = per_class.get_mut(c.label_index as usize) {
                *n += 1;
            }
        }
    }
    per_class
}

/// The split is assigned from content ids before decoding, so a file that
/// then fails to decode leaves its split one short: say so per class.
fn decode_failure_warnings(classes: &[String], failed_per_class: &[usize]) -> Vec<String> {
    classes
        .iter()
        .zip(failed_per_class)
        .filter(|(_, &n)| n > 0)
        .map(|(class, n)| {
            format!(
                "class '{class}': {n} file(s) failed to decode after the split was assigned; \
                 its split sizes may differ from the ratios by up to {n} more"
            )
        })
        .collect()
}

fn write_rejects(path: &Path, rejects: &[Reject]) -> Result<(), IngestError> {
    let mut w = csv::Writer::from_path(path).map_err(|e| IngestError::io(path, e.into()))?;
    w.write_record(["path", "kind", "reason"]).map_err(|e| IngestError::io(path, e.into()))?;
    for r in rejects {
        w.write_record([r.path.as_str(), r.kind.name().as_str(), r.reason.as_str()])
            .map_err(|e| IngestError::io(path, e.into()))?;
    }
    w.flush().map_err(|e| IngestError::io(path, e))
}

/// `dir`'s sibling `<prefix><name>.<suffix>`: `prefix` `"."` hides it, `""`
/// leaves it plain (for `partial_path`, which hides it itself).
fn sibling(dir: &Path, prefix: &str, suffix: &str) -> PathBuf {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "dataset".into());
    dir.with_file_name(format!("{prefix}{name}.{suffix}"))
}

/// Publishes the finished `partial` folder as `out_dir`, replacing what was
/// there: synced, then renamed into place (`atomic_file::publish_dir`). An
/// existing non-empty output is first renamed aside to
/// `.<name>.old.<pid>.partial` and removed after; a crash in between leaves
/// it for the next run's cleanup, never a half-written dataset.
fn replace_dir(partial: &Path, out_dir: &Path) -> Result<(), IngestError> {
    let empty_folder = std::fs::read_dir(out_dir).is_ok_and(|mut entries| entries.next().is_none());
    let exists = std::fs::symlink_metadata(out_dir).is_ok();
    if !exists || empty_folder {
        atomic_file::publish_dir(partial, out_dir)?;
        return Ok(());
    }
    let old = atomic_file::partial_path(&sibling(out_dir, "", "old"));
    atomic_file::rename(out_dir, &old)?;
    atomic_file::publish_dir(partial, out_dir)?;
    let removed = match std::fs::symlink_metadata(&old) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&old),
        _ => std::fs::remove_file(&old),
    };
    removed.map_err(|e| IngestError::io(&old, e))
}
