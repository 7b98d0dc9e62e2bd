//! Files that are never half-written. [`write`] puts the bytes in a
//! temporary sibling, `.<name>.<pid>.partial`, syncs it and renames it over
//! the target, so a reader (or a run resumed after a crash) sees the old
//! content or the new, never part of it. Every crate that writes results
//! uses this one implementation; a leftover `.partial` names the process
//! that left it ([`partial_pid`]), so clean-up can tell live from dead.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A write that failed: the file it was writing (the target or its
/// temporary sibling) and why.
#[derive(Debug)]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for WriteError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Writes `bytes` to `path` atomically, creating the parent folder if
/// needed. On failure the temporary sibling is removed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| WriteError { path: parent.to_owned(), source })?;
    }
    let partial = partial_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    })()
    .map_err(|source| WriteError { path: partial.clone(), source });
    let renamed = written
        .and_then(|()| std::fs::rename(&partial, path).map_err(|source| WriteError { path: path.to_owned(), source }));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

/// The temporary sibling [`write`] uses for `path`: `.<name>.<pid>.partial`
/// (hidden, and named after this process).
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// The process id in a temporary sibling's file name, if it is one.
pub fn partial_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".partial")?;
    rest.rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_whole_files_and_leave_no_sibling() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/a.json");
        write(&path, b"first, longer content").unwrap();
        write(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        let names: Vec<_> =
            std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["a.json"]);
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.txt");
        write(&path, b"old").unwrap();
        // A folder where the file should go: the rename fails.
        let blocked = dir.path().join("blocked");
        std::fs::create_dir_all(blocked.join("x")).unwrap();
        let err = write(&blocked, b"new").unwrap_err();
        assert_eq!(err.path, blocked);
        assert!(err.to_string().contains("blocked"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!partial_path(&blocked).exists(), "the temporary sibling was left behind");
    }

    #[test]
    fn partial_names_carry_the_pid() {
        let partial = partial_path(Path::new("/x/seg-1.parquet"));
        let name = partial.file_name().unwrap().to_str().unwrap();
        assert_eq!(partial_pid(name), Some(std::process::id()));
        assert_eq!(partial_pid("seg-1.parquet"), None);
        assert_eq!(partial_pid(".key.json.partial"), None);
        // The feature cache's segments are written under this name too.
        assert_eq!(partial_pid(".seg-00000000000000000001-42-000003.parquet.42.partial"), Some(42));
    }
}
