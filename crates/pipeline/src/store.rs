//! The stage store: `<runs>/.store/<stage>-<fingerprint16>/`, one folder per
//! stage output ("entry"), published complete: a stage writes into a
//! staging folder (`.<entry>.<pid>.partial`), the conductor adds the
//! [`StageMarker`] (`.stage.json`, listing every file with its size and, for
//! small files, its SHA-256) and renames the synced folder into place. A run
//! folder gets hard-linked copies, so later runs never touch it and no bytes
//! are duplicated. The demo images are generated into the store too
//! (`demo-images-<fp16>/`, by ingest).
//!
//! Each entry has a lock file, `<store>/.locks/<entry>.lock` (never
//! deleted): checking or producing an entry happens under its exclusive
//! lock, using it (from the check to the end of the run) under a shared one,
//! so `--force` or `pipeline gc` elsewhere cannot remove it meanwhile.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use atomic_file::Lock;
use contracts::run::{OutputFile, StageMarker, MARKER_FILE};

use crate::Stage;

/// The folder of the entries' lock files, inside the store.
pub const LOCKS_DIR: &str = ".locks";

/// One stage output in the store: its folder and lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `<store>/<stage>-<fp16>`; exists only once published.
    pub dir: PathBuf,
    pub lock: PathBuf,
    name: String,
}

impl Entry {
    pub fn new(store: &Path, stage: Stage, fingerprint: &str) -> Entry {
        Entry::named(store, format!("{stage}-{}", &fingerprint[..16]))
    }

    /// The entry called `name` (a folder name in the store).
    pub fn named(store: &Path, name: String) -> Entry {
        Entry { dir: store.join(&name), lock: lock_path(store, &name), name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the right to check or produce the entry (alone).
    pub fn lock_exclusive(&self) -> Result<Lock> {
        Ok(Lock::exclusive(&self.lock, &format!("the store entry {}", self.dir.display()))?)
    }

    /// Waits for the right to read the entry (beside other readers).
    pub fn lock_shared(&self) -> Result<Lock> {
        Ok(Lock::shared(&self.lock, &format!("the store entry {}", self.dir.display()))?)
    }

    /// The folder this process produces the entry in.
    pub fn staging(&self) -> PathBuf {
        atomic_file::partial_path(&self.dir)
    }

    /// Where a replaced entry goes before it is removed (a crash in between
    /// leaves a leftover, not a half-deleted entry).
    fn retired(&self) -> PathBuf {
        atomic_file::partial_path(&self.dir.with_file_name(format!("{}.retired", self.name)))
    }

    /// What earlier producers left beside the entry: staging folders (ours
    /// and the stages' own temporary siblings of them, `..<entry>.<pid>.partial.*`)
    /// and retired entries, oldest first. Under the exclusive lock all of them
    /// are stale: whoever made them no longer produces the entry.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        let Some(store) = self.dir.parent() else { return Vec::new() };
        let Ok(entries) = std::fs::read_dir(store) else { return Vec::new() };
        let prefix = format!("{}.", self.name);
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with('.') && name.trim_start_matches('.').starts_with(&prefix)
            })
            .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
            .collect();
        found.sort();
        found.into_iter().map(|(_, path)| path).collect()
    }

    /// Under the exclusive lock: removes every leftover.
    pub fn remove_leftovers(&self) -> Result<()> {
        for leftover in self.leftovers() {
            remove_path(&leftover)?;
        }
        Ok(())
    }

    /// Whether `path` is a staging folder of this entry (`.<entry>.<pid>.partial`).
    fn is_staging(&self, path: &Path) -> bool {
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return false };
        atomic_file::partial_pid(name).is_some_and(|pid| name == format!(".{}.{pid}.partial", self.name))
    }

    /// Prepares an empty staging folder under the exclusive lock: removes
    /// every leftover, except that with `resume` the newest earlier staging
    /// folder becomes ours (a killed or failed fine-tuning continues from its
    /// last epoch). Returns the staging folder and whether it was adopted.
    pub fn prepare_staging(&self, resume: bool) -> Result<(PathBuf, bool)> {
        let staging = self.staging();
        let mut leftovers = self.leftovers();
        let adopt = match resume {
            true => leftovers.iter().rposition(|p| self.is_staging(p) && p.is_dir()),
            false => None,
        };
        let adopted = adopt.map(|at| leftovers.remove(at));
        for leftover in &leftovers {
            remove_path(leftover)?;
        }
        match &adopted {
            Some(from) if from != &staging => atomic_file::rename(from, &staging)?,
            Some(_) => {}
            None => std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?,
        }
        if adopted.is_some() {
            remove_partials_below(&staging);
        }
        Ok((staging, adopted.is_some()))
    }

    /// Under the exclusive lock: makes `staging` (with its marker) the entry,
    /// replacing an existing one.
    pub fn publish(&self, staging: &Path) -> Result<()> {
        let retired = self.retired();
        if self.dir.exists() {
            atomic_file::rename(&self.dir, &retired)?;
        }
        atomic_file::publish_dir(staging, &self.dir)?;
        if retired.exists() {
            remove_path(&retired)?;
        }
        Ok(())
    }

    /// Under the exclusive lock: removes the entry (renamed aside first, so
    /// no half-deleted entry with a marker can remain).
    pub fn remove(&self) -> Result<()> {
        if self.dir.exists() {
            let retired = self.retired();
            atomic_file::rename(&self.dir, &retired)?;
            remove_path(&retired)?;
        }
        Ok(())
    }
}

/// Removes the temporary files and folders (named by
/// `atomic_file::partial_path`) that the killed stage left anywhere in an
/// adopted staging folder: under the entry's lock nobody is writing them.
fn remove_partials_below(dir: &Path) {
    let folders: Vec<PathBuf> = walkdir::WalkDir::new(dir)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_dir())
        .map(|e| e.into_path())
        .collect();
    for folder in folders {
        atomic_file::remove_stale_partials(&folder, true);
    }
}

/// `<store>/.locks/<entry>.lock`.
pub fn lock_path(store: &Path, entry: &str) -> PathBuf {
    store.join(LOCKS_DIR).join(format!("{entry}.lock"))
}

/// Whether a store folder name is a stage entry's (`<stage>-<16 hex>`).
pub fn is_entry_name(name: &str) -> bool {
    name.rsplit_once('-').is_some_and(|(stage, hash)| {
        stage.parse::<Stage>().is_ok() && hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

pub(crate) fn remove_path(path: &Path) -> Result<()> {
    let removed = match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    removed.with_context(|| format!("removing {}", path.display()))
}

/// The marker of an entry made with this fingerprint, if any. A marker that
/// does not read (another schema version, a torn file) means "not complete":
/// the stage runs again.
pub fn complete(dir: &Path, fingerprint: &str) -> Option<StageMarker> {
    let marker: StageMarker = contracts::read(&dir.join(MARKER_FILE)).ok()?;
    (marker.fingerprint == fingerprint).then_some(marker)
}

pub fn mark_complete(dir: &Path, marker: &StageMarker) -> Result<()> {
    Ok(contracts::write(&dir.join(MARKER_FILE), marker)?)
}

/// Every regular file below `dir` but the marker, sorted, with its size and
/// (below [`OutputFile::HASHED_BELOW`] bytes) its SHA-256.
pub fn list_outputs(dir: &Path) -> Result<Vec<OutputFile>> {
    let mut outputs = Vec::new();
    for entry in walkdir::WalkDir::new(dir).follow_links(false).sort_by_file_name() {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let relative = entry.path().strip_prefix(dir).unwrap_or(entry.path());
        if !entry.file_type().is_file() || relative == Path::new(MARKER_FILE) {
            continue;
        }
        let path = relative
            .to_str()
            .with_context(|| format!("{}: a stage output whose name is not UTF-8", entry.path().display()))?
            .to_owned();
        let size = entry.metadata().with_context(|| format!("reading {}", entry.path().display()))?.len();
        let sha256 = (size < OutputFile::HASHED_BELOW).then(|| file_sha256(entry.path())).transpose()?;
        outputs.push(OutputFile { path, size, sha256 });
    }
    Ok(outputs)
}

/// Checks that every file the marker lists is still there, a regular file
/// of its size (and digest, where recorded). `Err` says the first that is
/// not.
pub fn verify(dir: &Path, marker: &StageMarker) -> Result<(), String> {
    for output in &marker.outputs {
        let path = dir.join(&output.path);
        let meta = std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() {
            return Err(format!("{} is no longer a regular file", path.display()));
        }
        if meta.len() != output.size {
            return Err(format!("{} has {} bytes, {} were recorded", path.display(), meta.len(), output.size));
        }
        if let Some(expected) = &output.sha256 {
            let actual = file_sha256(&path).map_err(|e| format!("{e:#}"))?;
            if &actual != expected {
                return Err(format!("{} changed (SHA-256 {actual}, {expected} recorded)", path.display()));
            }
        }
    }
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|mut file| file.read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(spec::sha256_hex(&bytes))
}

/// Copies `from` into `to` (which must not exist) as hard links, falling
/// back to a byte copy across file systems. Symlinks are skipped.
pub fn link_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let Ok(relative) = entry.path().strip_prefix(from) else {
            bail!("{} is outside {}", entry.path().display(), from.display());
        };
        let target = to.join(relative);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
        } else if entry.file_type().is_file() && std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {} to {}", entry.path().display(), target.display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(fingerprint: &str, outputs: Vec<OutputFile>) -> StageMarker {
        StageMarker {
            stage: Stage::Head.name().into(),
            fingerprint: fingerprint.into(),
            seconds: 1.5,
            finished_at: "2026-01-01T00:00:00Z".into(),
            outputs,
        }
    }

    #[test]
    fn a_marker_vouches_for_its_fingerprint_only() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = "ab".repeat(32);
        assert!(complete(dir.path(), &fingerprint).is_none());
        let marker = marker(&fingerprint, Vec::new());
        mark_complete(dir.path(), &marker).unwrap();
        assert_eq!(complete(dir.path(), &fingerprint), Some(marker));
        assert!(complete(dir.path(), &"cd".repeat(32)).is_none());
        let entry = Entry::new(Path::new("s"), Stage::Ingest, &fingerprint);
        assert_eq!(entry.dir, Path::new("s/ingest-abababababababab"));
        assert_eq!(entry.lock, Path::new("s/.locks/ingest-abababababababab.lock"));
        assert!(is_entry_name("ingest-abababababababab") && !is_entry_name("demo-images-abababababababab"));
    }

    #[test]
    fn a_version_1_marker_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = "ab".repeat(32);
        let old = format!(
            r#"{{"schema_version": 1, "stage": "head", "fingerprint": "{fingerprint}", "seconds": 1.0, "finished_at": "x"}}"#
        );
        std::fs::write(dir.path().join(MARKER_FILE), old).unwrap();
        assert!(complete(dir.path(), &fingerprint).is_none());
    }

    #[test]
    fn verification_finds_deleted_resized_and_changed_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("a.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("sub/b.bin"), vec![7u8; 100]).unwrap();
        let outputs = list_outputs(dir.path()).unwrap();
        let paths: Vec<&str> = outputs.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(paths, ["a.json", "sub/b.bin"]);
        assert!(outputs.iter().all(|o| o.sha256.is_some()));
        let marker = marker("x", outputs);
        mark_complete(dir.path(), &marker).unwrap();
        assert_eq!(list_outputs(dir.path()).unwrap(), marker.outputs, "the marker lists itself");
        assert_eq!(verify(dir.path(), &marker), Ok(()));

        std::fs::write(dir.path().join("sub/b.bin"), vec![8u8; 100]).unwrap();
        let err = verify(dir.path(), &marker).unwrap_err();
        assert!(err.contains("sub/b.bin changed"), "{err}");
        std::fs::write(dir.path().join("sub/b.bin"), vec![7u8; 99]).unwrap();
        let err = verify(dir.path(), &marker).unwrap_err();
        assert!(err.contains("has 99 bytes, 100 were recorded"), "{err}");
        std::fs::remove_file(dir.path().join("a.json")).unwrap();
        let err = verify(dir.path(), &marker).unwrap_err();
        assert!(err.contains("a.json"), "{err}");
    }

    #[test]
    fn staging_removes_leftovers_or_resumes_the_newest() {
        let store = tempfile::tempdir().unwrap();
        let entry = Entry::new(store.path(), Stage::Finetune, &"ab".repeat(32));
        let other = Entry::new(store.path(), Stage::Head, &"ab".repeat(32));
        let old = store.path().join(format!(".{}.4000001.partial", entry.name()));
        let newer = store.path().join(format!(".{}.4000002.partial", entry.name()));
        let ingest_sibling = store.path().join(format!("..{}.4000002.partial.old", entry.name()));
        let not_ours = store.path().join(format!(".{}.4000003.partial", other.name()));
        for dir in [&old, &newer, &ingest_sibling, &not_ours] {
            std::fs::create_dir_all(dir).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::fs::write(newer.join("state.json"), b"epoch 1").unwrap();
        let half_written = newer.join("artifacts").join(".artifacts-abc.4000002.partial");
        std::fs::create_dir_all(&half_written).unwrap();
        let mut leftovers = entry.leftovers();
        leftovers.sort();
        assert_eq!(leftovers, [ingest_sibling.clone(), old.clone(), newer.clone()]);

        let (staging, adopted) = entry.prepare_staging(true).unwrap();
        assert!(adopted);
        assert_eq!(staging, entry.staging());
        assert_eq!(std::fs::read(staging.join("state.json")).unwrap(), b"epoch 1");
        assert!(staging.join("artifacts").is_dir(), "the adopted folder lost its content");
        assert!(!staging.join("artifacts/.artifacts-abc.4000002.partial").exists(), "a killed stage's partial stayed");
        assert!(!old.exists() && !newer.exists() && !ingest_sibling.exists());
        assert!(not_ours.exists(), "another entry's staging folder was touched");

        std::fs::write(staging.join("model.onnx"), b"m").unwrap();
        entry.publish(&staging).unwrap();
        assert!(entry.dir.join("model.onnx").is_file() && !staging.exists());
        let (staging, adopted) = entry.prepare_staging(false).unwrap();
        assert!(!adopted);
        assert_eq!(std::fs::read_dir(&staging).unwrap().count(), 0);
        std::fs::write(staging.join("model.onnx"), b"new").unwrap();
        entry.publish(&staging).unwrap();
        assert_eq!(std::fs::read(entry.dir.join("model.onnx")).unwrap(), b"new");
        assert!(entry.leftovers().is_empty(), "{:?}", entry.leftovers());
        entry.remove().unwrap();
        assert!(!entry.dir.exists() && entry.leftovers().is_empty());
    }

    #[test]
    fn linked_trees_survive_their_source() {
        let dir = tempfile::tempdir().unwrap();
        let (from, to) = (dir.path().join("from"), dir.path().join("to"));
        std::fs::create_dir_all(from.join("sub")).unwrap();
        std::fs::write(from.join("sub/f"), b"bytes").unwrap();
        link_tree(&from, &to).unwrap();
        std::fs::remove_dir_all(&from).unwrap();
        assert_eq!(std::fs::read(to.join("sub/f")).unwrap(), b"bytes");
    }
}
