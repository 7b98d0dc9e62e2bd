//! The crate's only file system access: atomic writes and stale-file removal.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::ReportError;

/// Writes `bytes` to `<path>.partial`, flushes it to disk and renames it to
/// `path`, so readers see either the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let partial = partial_path(path);
    let result = write_and_sync(&partial, bytes)
        .and_then(|()| fs::rename(&partial, path).map_err(ReportError::io("rename into place", path)));
    if result.is_err() {
        // Best effort: a failed write leaves no half-written sibling behind.
        let _ = fs::remove_file(&partial);
    }
    result
}

fn write_and_sync(partial: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let mut file = fs::File::create(partial).map_err(ReportError::io("create", partial))?;
    file.write_all(bytes).map_err(ReportError::io("write", partial))?;
    file.sync_all().map_err(ReportError::io("sync", partial))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".partial");
    path.with_file_name(name)
}

/// Creates `dir` and its parents.
pub(crate) fn create_dir(dir: &Path) -> Result<(), ReportError> {
    fs::create_dir_all(dir).map_err(ReportError::io("create directory", dir))
}

/// Removes a file left by an earlier render that this one does not write,
/// so the folder matches the report. A missing file is fine.
pub(crate) fn remove_stale(path: &Path) -> Result<(), ReportError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReportError::io("remove stale", path)(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_partial() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.txt")]);
    }

    #[test]
    fn failed_write_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("a.txt");
        let err = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(err.contains("a.txt.partial") && err.contains("cannot create"), "{err}");
    }
}
