//! Files that are never half-written, and the locks and clean-up that let
//! several processes share one folder.
//!
//! [`write`] puts the bytes in a temporary sibling, `.<name>.<pid>.partial`,
//! syncs it, renames it over the target and syncs the folder, so a reader
//! (or a run resumed after a crash, even a power cut) sees the old content
//! or the new, never part of it. [`publish_dir`] does the same for a whole
//! folder. Every crate that writes results uses this one implementation; a
//! leftover `.partial` names the process that left it ([`partial_pid`]), so
//! [`remove_stale_partials`] can tell live from dead. [`Lock`] is the one
//! advisory lock (a second process waits, and says so).

mod lock;

pub use lock::{Lock, LockError};

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

fn at(path: &Path) -> impl FnOnce(std::io::Error) -> WriteError + '_ {
    move |source| WriteError { path: path.to_owned(), source }
}

/// Writes `bytes` to `path` atomically and durably, creating the parent
/// folder if needed. On failure the temporary sibling is removed.
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), WriteError> {
    if let Some(parent) = parent(path) {
        std::fs::create_dir_all(parent).map_err(at(parent))?;
    }
    let partial = partial_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&partial)?;
        file.write_all(bytes)?;
        file.sync_all()
    })()
    .map_err(at(&partial));
    let renamed = written.and_then(|()| rename(&partial, path));
    if renamed.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    renamed
}

/// Renames `from` to `to` (a file or a folder) and syncs the folder that
/// holds `to`, so the new name survives a crash.
pub fn rename(from: &Path, to: &Path) -> Result<(), WriteError> {
    std::fs::rename(from, to).map_err(at(to))?;
    match parent(to) {
        Some(folder) => sync_dir(folder),
        None => sync_dir(Path::new(".")),
    }
}

/// Makes a finished folder durable and gives it its final name: every file
/// below `staging` is synced, then `staging` is renamed to `target` (which
/// must not exist, or be an empty folder) and the parent synced.
pub fn publish_dir(staging: &Path, target: &Path) -> Result<(), WriteError> {
    sync_tree(staging)?;
    rename(staging, target)
}

/// Syncs every regular file and folder below `dir` (symlinks are not
/// followed), then `dir` itself.
pub fn sync_tree(dir: &Path) -> Result<(), WriteError> {
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(at(&folder))? {
            let entry = entry.map_err(at(&folder))?;
            let kind = entry.file_type().map_err(at(&entry.path()))?;
            let path = entry.path();
            if kind.is_dir() {
                folders.push(path);
            } else if kind.is_file() {
                std::fs::File::open(&path).and_then(|f| f.sync_all()).map_err(at(&path))?;
            }
        }
        sync_dir(&folder)?;
    }
    Ok(())
}

/// Syncs a folder, so the names created or renamed in it are durable.
pub fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(at(dir))
}

fn parent(path: &Path) -> Option<&Path> {
    path.parent().filter(|p| !p.as_os_str().is_empty())
}

/// The temporary sibling [`write`] uses for `path`: `.<name>.<pid>.partial`
/// (hidden, and named after this process). A folder being made may use the
/// same name (see [`publish_dir`]).
pub fn partial_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.partial", std::process::id()))
}

/// The process id in a temporary sibling's file name, if it is one.
pub fn partial_pid(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix('.')?.strip_suffix(".partial")?;
    rest.rsplit('.').next()?.parse().ok()
}

/// Whether a process with this id runs on this machine (where `/proc`
/// cannot tell, every process counts as running: nothing is removed).
pub fn process_alive(pid: u32) -> bool {
    !Path::new("/proc/self").exists() || Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes the temporary siblings (files or folders, named by
/// [`partial_path`]) in `dir` whose process no longer runs; returns what it
/// removed. A process that holds the [`Lock`] over `dir` may pass
/// `all = true` to remove every one but its own (a dead process's id may
/// have been reused).
pub fn remove_stale_partials(dir: &Path, all: bool) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let own = std::process::id();
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(partial_pid) else { continue };
        if pid == own || (!all && process_alive(pid)) {
            continue;
        }
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(kind) if kind.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
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

    #[test]
    fn stale_partials_of_dead_processes_go_and_live_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        // A process id above the kernel's maximum (4194304) never runs.
        let dead = dir.path().join(".a.json.999999999.partial");
        let dead_dir = dir.path().join(".head-0123.999999998.partial");
        let own = partial_path(&dir.path().join("b.json"));
        let kept = dir.path().join("c.json");
        std::fs::write(&dead, b"x").unwrap();
        std::fs::create_dir_all(dead_dir.join("sub")).unwrap();
        std::fs::write(&own, b"x").unwrap();
        std::fs::write(&kept, b"x").unwrap();
        let mut removed = remove_stale_partials(dir.path(), false);
        removed.sort();
        assert_eq!(removed, [dead.clone(), dead_dir.clone()]);
        assert!(own.exists() && kept.exists() && !dead.exists() && !dead_dir.exists());
    }

    #[test]
    fn a_published_folder_appears_whole_under_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        let staging = partial_path(&target);
        std::fs::create_dir_all(staging.join("sub")).unwrap();
        std::fs::write(staging.join("sub/f"), b"bytes").unwrap();
        publish_dir(&staging, &target).unwrap();
        assert_eq!(std::fs::read(target.join("sub/f")).unwrap(), b"bytes");
        assert!(!staging.exists());
    }
}
