//! The stage store: `<runs>/.store/<stage>-<fingerprint16>/`, one folder per
//! stage output, complete once it holds its [`StageMarker`]
//! (`.stage.json`, written last). A run folder gets hard-linked copies, so
//! later runs never touch it and no bytes are duplicated. The demo images
//! are generated into the store too (`demo-images-<fp16>/`, by ingest).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use contracts::run::{StageMarker, MARKER_FILE};

use crate::Stage;

pub fn stage_dir(store: &Path, stage: Stage, fingerprint: &str) -> PathBuf {
    store.join(format!("{stage}-{}", &fingerprint[..16]))
}

/// The marker of a complete output with this fingerprint, if any. A marker
/// that does not read (another schema version, a torn file) means "not
/// complete": the stage runs again.
pub fn complete(dir: &Path, fingerprint: &str) -> Option<StageMarker> {
    let marker: StageMarker = contracts::read(&dir.join(MARKER_FILE)).ok()?;
    (marker.fingerprint == fingerprint).then_some(marker)
}

pub fn mark_complete(dir: &Path, marker: &StageMarker) -> Result<()> {
    Ok(contracts::write(&dir.join(MARKER_FILE), marker)?)
}

/// Copies `from` into `to` (which must not exist) as hard links, falling
/// back to a byte copy across file systems. Symlinks are skipped.
pub fn link_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from).follow_links(false) {
        let entry = entry.with_context(|| format!("reading {}", from.display()))?;
        let target = to.join(entry.path().strip_prefix(from).expect("walkdir stays under its root"));
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

    #[test]
    fn a_marker_vouches_for_its_fingerprint_only() {
        let dir = tempfile::tempdir().unwrap();
        let fingerprint = "ab".repeat(32);
        assert!(complete(dir.path(), &fingerprint).is_none());
        let marker = StageMarker {
            stage: Stage::Head.name().into(),
            fingerprint: fingerprint.clone(),
            seconds: 1.5,
            finished_at: "2026-01-01T00:00:00Z".into(),
        };
        mark_complete(dir.path(), &marker).unwrap();
        assert_eq!(complete(dir.path(), &fingerprint), Some(marker));
        assert!(complete(dir.path(), &"cd".repeat(32)).is_none());
        assert_eq!(stage_dir(Path::new("s"), Stage::Ingest, &fingerprint), Path::new("s/ingest-abababababababab"));
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
