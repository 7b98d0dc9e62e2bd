//! `pipeline gc`: removes what no run refers to any more: stage-store
//! entries that no run folder's `run.json` names, feature-cache key folders
//! that no `features.json` (in a kept store entry or a run folder) names,
//! and what killed processes left (staging folders, retired entries).
//! Each removal happens under the thing's exclusive lock, taken without
//! waiting: an entry or key folder in use is skipped and reported.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use atomic_file::Lock;
use contracts::features::{FeaturesInfo, FEATURES_FILE};
use contracts::run::{RunRecord, RUN_FILE};

use crate::store::{self, Entry};

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Holds the run folders and `.store/`.
    pub runs_root: PathBuf,
    /// The feature cache; `None`: the stages' default (`$TL_CACHE_DIR/features`).
    pub features_cache: Option<PathBuf>,
    /// List what would go, remove nothing.
    pub dry_run: bool,
}

/// One thing removed (or, in a dry run, that would be).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub path: PathBuf,
    pub bytes: u64,
    /// "store entry", "feature cache", "leftover".
    pub what: &'static str,
}

/// What a collection did.
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub removed: Vec<Removal>,
    /// Unreferenced but locked by a running process: kept.
    pub busy: Vec<PathBuf>,
    /// Run folders whose `run.json` did not read (what they use is kept
    /// only if another run names it): each with the reason.
    pub unreadable: Vec<String>,
}

impl GcReport {
    pub fn bytes(&self) -> u64 {
        self.removed.iter().map(|r| r.bytes).sum()
    }
}

pub fn gc(options: &GcOptions) -> Result<GcReport> {
    let mut report = GcReport::default();
    let store_dir = options.runs_root.join(".store");
    let runs = folders_holding(&options.runs_root, RUN_FILE)?;
    let mut referenced = BTreeSet::new();
    for run in &runs {
        match contracts::read::<RunRecord>(&run.join(RUN_FILE)) {
            Ok(record) => referenced.extend(
                record.stages.iter().filter_map(|s| s.output.file_name()).map(|n| n.to_string_lossy().into_owned()),
            ),
            Err(e) => report.unreadable.push(e.to_string()),
        }
    }
    let mut kept_features = Vec::new();
    for name in store_entries(&store_dir)? {
        let entry = Entry::named(&store_dir, name.clone());
        let unused = entry.dir.exists() && !referenced.contains(&name);
        let leftovers = entry.leftovers();
        if !unused && leftovers.is_empty() {
            kept_features.push(entry.dir.join(FEATURES_FILE));
            continue;
        }
        let Some(_lock) = Lock::try_exclusive(&entry.lock)? else {
            report.busy.push(entry.dir.clone());
            kept_features.push(entry.dir.join(FEATURES_FILE));
            continue;
        };
        for leftover in leftovers {
            report.removed.push(Removal { bytes: tree_bytes(&leftover), path: leftover.clone(), what: "leftover" });
            if !options.dry_run {
                store::remove_path(&leftover)?;
            }
        }
        if unused {
            report.removed.push(Removal {
                bytes: tree_bytes(&entry.dir),
                path: entry.dir.clone(),
                what: "store entry",
            });
            if !options.dry_run {
                entry.remove()?;
            }
        } else {
            kept_features.push(entry.dir.join(FEATURES_FILE));
        }
    }
    // Other temporary folders and files of dead processes (the demo
    // images'); an entry's own were handled above, under its lock.
    for path in stale_partials_outside_entries(&store_dir) {
        report.removed.push(Removal { bytes: tree_bytes(&path), path: path.clone(), what: "leftover" });
        if !options.dry_run {
            store::remove_path(&path)?;
        }
    }

    let cache = match &options.features_cache {
        Some(dir) => dir.clone(),
        None => contracts::cache_dir()?.join("features"),
    };
    let mut used_keys = BTreeSet::new();
    for features in kept_features.into_iter().chain(runs.iter().map(|r| r.join("features").join(FEATURES_FILE))) {
        if let Ok(info) = contracts::read::<FeaturesInfo>(&features) {
            if let Some(name) = info.cache.store.file_name() {
                used_keys.insert(name.to_string_lossy().into_owned());
            }
        }
    }
    for key_dir in folders_holding(&cache, feature_cache::KEY_FILE)? {
        let name = key_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if used_keys.contains(&name) {
            continue;
        }
        // Shared by each process using the key folder.
        let Some(_lock) = Lock::try_exclusive(&feature_cache::lock_path(&key_dir))? else {
            report.busy.push(key_dir);
            continue;
        };
        report.removed.push(Removal { bytes: tree_bytes(&key_dir), path: key_dir.clone(), what: "feature cache" });
        if !options.dry_run {
            store::remove_path(&key_dir)?;
        }
    }
    Ok(report)
}

/// The folders under `dir`, not hidden, that hold a file named `file`, sorted.
fn folders_holding(dir: &Path, file: &str) -> Result<Vec<PathBuf>> {
    let mut folders = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(folders) };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        if !hidden && entry.path().join(file).is_file() {
            folders.push(entry.path());
        }
    }
    folders.sort();
    Ok(folders)
}

/// The names of the stage entries in the store, published or only left
/// over (`.<entry>.<pid>.partial`, `..<entry>.…`).
fn store_entries(store_dir: &Path) -> Result<BTreeSet<String>> {
    let mut names = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(store_dir) else { return Ok(names) };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", store_dir.display()))?;
        let file_name = entry.file_name();
        let name = file_name.to_string_lossy();
        let base = name.trim_start_matches('.');
        let base = base.split('.').next().unwrap_or_default();
        if store::is_entry_name(base) {
            names.insert(base.to_owned());
        }
    }
    Ok(names)
}

/// Temporary siblings (`.<name>.<pid>.partial`) in the store of processes
/// that no longer run, other than the stage entries' own.
fn stale_partials_outside_entries(store_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(store_dir) else { return Vec::new() };
    entries
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let base = name.trim_start_matches('.').split('.').next().unwrap_or_default().to_owned();
            let pid = atomic_file::partial_pid(&name);
            !store::is_entry_name(&base) && pid.is_some_and(|pid| !atomic_file::process_alive(pid))
        })
        .map(|e| e.path())
        .collect()
}

/// The bytes of the regular files below `path` (or of the file).
fn tree_bytes(path: &Path) -> u64 {
    walkdir::WalkDir::new(path)
        .follow_links(false)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Stage;
    use contracts::run::{StageRecord, StageStatus};

    fn record(outputs: &[&Path]) -> RunRecord {
        RunRecord {
            name: "t".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            model_spec: "m.toml".into(),
            model_note: None,
            stages: outputs
                .iter()
                .map(|output| StageRecord {
                    name: "head".into(),
                    status: StageStatus::Ran,
                    seconds: 1.0,
                    fingerprint: "f".into(),
                    output: output.to_path_buf(),
                    log: "l".into(),
                    note: String::new(),
                })
                .collect(),
            seconds: 1.0,
            report: None,
        }
    }

    #[test]
    fn unreferenced_entries_and_leftovers_go_referenced_and_busy_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let runs = root.path().join("runs");
        let store_dir = runs.join(".store");
        let kept = Entry::new(&store_dir, Stage::Head, &"aa".repeat(32));
        let unused = Entry::new(&store_dir, Stage::Head, &"bb".repeat(32));
        let busy = Entry::new(&store_dir, Stage::Ingest, &"cc".repeat(32));
        for entry in [&kept, &unused, &busy] {
            std::fs::create_dir_all(&entry.dir).unwrap();
            std::fs::write(entry.dir.join("head.json"), b"12345").unwrap();
        }
        let stale_demo = store_dir.join(".demo-images-0123456789abcdef.4000001.partial");
        std::fs::create_dir_all(&stale_demo).unwrap();
        let stale = store_dir.join(format!(".{}.4000001.partial", kept.name()));
        std::fs::create_dir_all(&stale).unwrap();
        std::fs::write(stale.join("x"), b"abc").unwrap();
        std::fs::create_dir_all(runs.join("t-1")).unwrap();
        // Relative, as a run with `--runs runs` records it.
        contracts::write(
            &runs.join("t-1").join(RUN_FILE),
            &record(&[Path::new("runs/.store").join(kept.name()).as_path()]),
        )
        .unwrap();
        let cache = root.path().join("cache");
        // No features.json names them (a real one is in tests/store.rs).
        for key in ["a-key", "old-key"] {
            std::fs::create_dir_all(cache.join(key)).unwrap();
            std::fs::write(cache.join(key).join("key.json"), b"{}").unwrap();
        }
        let _in_use = busy.lock_shared().unwrap();

        let options = GcOptions { runs_root: runs.clone(), features_cache: Some(cache.clone()), dry_run: true };
        let dry = gc(&options).unwrap();
        let listed: BTreeSet<PathBuf> = dry.removed.iter().map(|r| r.path.clone()).collect();
        let expected: BTreeSet<PathBuf> =
            [unused.dir.clone(), stale.clone(), stale_demo.clone(), cache.join("a-key"), cache.join("old-key")]
                .into_iter()
                .collect();
        assert_eq!(listed, expected);
        assert_eq!(dry.bytes(), 5 + 3 + 2 + 2);
        assert_eq!(dry.busy, std::slice::from_ref(&busy.dir));
        assert!(unused.dir.exists() && stale.exists(), "a dry run removed something");

        let done = gc(&GcOptions { dry_run: false, ..options }).unwrap();
        assert_eq!(done.removed.len(), 5, "{:?}", done.removed);
        assert!(!stale_demo.exists());
        assert!(kept.dir.join("head.json").exists() && busy.dir.exists());
        assert!(!unused.dir.exists() && !stale.exists() && !cache.join("old-key").exists());
        assert!(store_dir.join(".locks").join(format!("{}.lock", unused.name())).exists(), "lock files stay");
    }
}
