//! Finding the images: an image folder (one sub-folder per class) or a CSV
//! manifest. Produces candidates in a deterministic order; never decodes.

use std::fs;
use std::path::{Path, PathBuf};

use imaging::IMAGE_EXTENSIONS;
use spec::DatasetSource;
use walkdir::WalkDir;

use crate::{IngestError, Reject, RejectKind};

/// A file that should become a row, if it reads and decodes.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    pub abs: PathBuf,
    /// Path relative to the dataset root (or the manifest's folder), with '/'.
    pub rel: String,
    pub label_index: u32,
}

#[derive(Debug, Default)]
pub(crate) struct Discovery {
    /// Class names in sorted order; a class's index is its position.
    pub classes: Vec<String>,
    /// Sorted by (label, relative path): the order rows are written in.
    pub candidates: Vec<Candidate>,
    pub rejects: Vec<Reject>,
    /// Files skipped on purpose: hidden, or not an image extension.
    pub ignored: usize,
}

pub(crate) fn discover(source: &DatasetSource, include_hidden: bool) -> Result<Discovery, IngestError> {
    match source {
        DatasetSource::Root(root) => discover_folder(Path::new(root), include_hidden),
        DatasetSource::Manifest(manifest) => discover_manifest(Path::new(manifest)),
    }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn relative(base: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(base).unwrap_or(path);
    rel.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// Why a path named by a folder listing cannot be used: a dangling symlink,
/// a symlink loop, or another read error (`error` from following it).
pub(crate) fn io_reject(rel: String, path: &Path, error: &std::io::Error) -> Reject {
    let is_link = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    if is_link && error.kind() == std::io::ErrorKind::NotFound {
        let target = fs::read_link(path).map(|t| t.display().to_string()).unwrap_or_default();
        return Reject::new(
            rel,
            RejectKind::DanglingLink,
            format!("dangling symlink: its target {target} does not exist"),
        );
    }
    // ELOOP: too many levels of symbolic links (Linux's errno 40).
    if error.raw_os_error() == Some(40) {
        return Reject::new(rel, RejectKind::SymlinkLoop, format!("symlink loop: {error}"));
    }
    Reject::new(rel, RejectKind::Unreadable, format!("cannot read: {error}"))
}

fn non_utf8(rel: String, what: &str) -> Reject {
    Reject::new(
        rel,
        RejectKind::NonUtf8Name,
        format!(
            "{what} name is not valid UTF-8 (shown here with U+FFFD for the bytes that are not); rename it to use it"
        ),
    )
}

fn discover_folder(root: &Path, include_hidden: bool) -> Result<Discovery, IngestError> {
    if !root.exists() {
        return Err(IngestError::RootMissing(root.to_path_buf()));
    }
    if !root.is_dir() {
        return Err(IngestError::NotAFolder(root.to_path_buf()));
    }
    let mut out = Discovery::default();
    let entries = fs::read_dir(root).map_err(|e| IngestError::io(root, e))?;
    let mut class_dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| IngestError::io(root, e))?;
        if !include_hidden && is_hidden(&entry.file_name()) {
            continue;
        }
        let rel = relative(root, &entry.path());
        // `metadata` follows symlinks, so a linked class folder counts.
        match fs::metadata(entry.path()) {
            Ok(m) if m.is_dir() => match entry.file_name().to_str() {
                Some(name) => class_dirs.push(name.to_owned()),
                // A class label is the folder's name: it must be text.
                None => out.rejects.push(non_utf8(rel, "class folder")),
            },
            Ok(_) => out.ignored += 1, // loose files at the top level are not labelled
            Err(e) => out.rejects.push(io_reject(rel, &entry.path(), &e)),
        }
    }
    class_dirs.sort();
    if class_dirs.len() < 2 {
        return Err(IngestError::TooFewClasses { root: root.to_path_buf(), found: class_dirs });
    }
    for (label_index, class) in class_dirs.iter().enumerate() {
        let class_root = root.join(class);
        let before = out.candidates.len();
        let mut walker = WalkDir::new(&class_root)
            .follow_links(true)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| include_hidden || e.depth() == 0 || !is_hidden(e.file_name()));
        while let Some(entry) = walker.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(err) => {
                    let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| class_root.clone());
                    let rel = relative(root, &path);
                    out.rejects.push(match (err.loop_ancestor(), err.io_error()) {
                        (Some(ancestor), _) => Reject::new(
                            rel,
                            RejectKind::SymlinkLoop,
                            format!("symlink loop: points back to its ancestor {}", ancestor.display()),
                        ),
                        (None, Some(io)) => io_reject(rel, &path, io),
                        (None, None) => Reject::new(rel, RejectKind::Unreadable, err.to_string()),
                    });
                    continue;
                }
            };
            // Paths are recorded as text in the dataset: a name that is not
            // UTF-8 would be recorded as a different path, so it is refused.
            let utf8 = entry.path().strip_prefix(root).is_ok_and(|rel| rel.to_str().is_some());
            let rel = relative(root, entry.path());
            match (entry.file_type().is_dir(), has_image_extension(entry.path()), utf8) {
                (true, _, true) => {} // walked into
                (true, _, false) => {
                    walker.skip_current_dir();
                    out.rejects.push(non_utf8(rel, "folder"));
                }
                (false, true, true) => {
                    out.candidates.push(Candidate { abs: entry.into_path(), rel, label_index: label_index as u32 })
                }
                (false, true, false) => out.rejects.push(non_utf8(rel, "file")),
                (false, false, _) => out.ignored += 1,
            }
        }
        if out.candidates.len() == before {
            return Err(IngestError::EmptyClass(class_root));
        }
    }
    // Walk order is per folder; the row order must be one total order.
    out.candidates.sort_by(|a, b| (a.label_index, &a.rel).cmp(&(b.label_index, &b.rel)));
    out.classes = class_dirs;
    Ok(out)
}

fn discover_manifest(manifest: &Path) -> Result<Discovery, IngestError> {
    if !manifest.exists() {
        return Err(IngestError::RootMissing(manifest.to_path_buf()));
    }
    let base = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
    let bad = |line: u64, reason: String| IngestError::Manifest { path: manifest.to_path_buf(), line, reason };
    let unreadable = |line: u64| move |source| IngestError::ManifestCsv { path: manifest.to_path_buf(), line, source };
    let mut reader = csv::Reader::from_path(manifest).map_err(unreadable(0))?;
    let headers = reader.headers().map_err(unreadable(1))?.clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h.trim() == name)
            .ok_or_else(|| bad(1, format!("missing column '{name}' (need a `path,label` header)")))
    };
    let (path_col, label_col) = (column("path")?, column("label")?);
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let line = i as u64 + 2;
        let record = record.map_err(unreadable(line))?;
        let (path, label) = (record.get(path_col).unwrap_or("").trim(), record.get(label_col).unwrap_or("").trim());
        if path.is_empty() || label.is_empty() {
            return Err(bad(line, "empty path or label".into()));
        }
        rows.push((path.to_string(), label.to_string()));
    }
    let mut classes: Vec<String> = rows.iter().map(|(_, l)| l.clone()).collect();
    classes.sort();
    classes.dedup();
    if classes.len() < 2 {
        return Err(IngestError::TooFewClasses { root: manifest.to_path_buf(), found: classes });
    }
    let mut out = Discovery::default();
    for (path, label) in rows {
        let abs = base.join(&path);
        let label_index = classes.binary_search(&label).expect("label collected above") as u32;
        out.candidates.push(Candidate { rel: relative(&base, &abs), abs, label_index });
    }
    out.classes = classes;
    out.candidates.sort_by(|a, b| (a.label_index, &a.rel).cmp(&(b.label_index, &b.rel)));
    out.candidates.dedup_by(|a, b| a.label_index == b.label_index && a.rel == b.rel);
    Ok(out)
}
