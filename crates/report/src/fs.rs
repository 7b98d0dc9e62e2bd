//! The crate's only file system access: atomic writes and stale-file removal.

use std::fs;

use std::path::Path;

use crate::ReportError;

/// Writes `bytes` through a synced temporary sibling renamed to `path`, so
/// readers see either the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    atomic_file::write(path, bytes).map_err(|e| ReportError::io("write", &e.path)(e.source))
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
        // A folder stands where the file should go: the rename fails.
        let path = dir.path().join("a.txt");
        fs::create_dir_all(path.join("x")).unwrap();
        let err = write_atomic(&path, b"x").unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("cannot write"), "{err}");
    }
}
