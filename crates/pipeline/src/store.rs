//! The stage store: `<runs>/.store/<stage>-<fingerprint16>/`, one folder per
//! stage output, complete once it holds [`MARKER`] (written last). A run
//! folder gets hard-linked copies, so later runs never touch it and no
//! bytes are duplicated.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// Written by the conductor after a stage succeeded.
pub const MARKER: &str = ".stage.json";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub stage: String,
    pub fingerprint: String,
    pub seconds: f64,
    pub finished_at: String,
}

pub fn stage_dir(store: &Path, stage: &str, fingerprint: &str) -> PathBuf {
    store.join(format!("{stage}-{}", &fingerprint[..16]))
}

/// The marker of a complete output with this fingerprint, if any.
pub fn complete(dir: &Path, fingerprint: &str) -> Option<Marker> {
    let marker: Marker = serde_json::from_slice(&std::fs::read(dir.join(MARKER)).ok()?).ok()?;
    (marker.fingerprint == fingerprint).then_some(marker)
}

pub fn mark_complete(dir: &Path, marker: &Marker) -> Result<()> {
    Ok(atomic_file::write(&dir.join(MARKER), &serde_json::to_vec_pretty(marker)?)?)
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

/// A digest of a folder's files: sorted relative paths and SHA-256 of each
/// file's bytes (hidden entries skipped, as ingest skips them). Content,
/// not timestamps: touching a file changes nothing, editing one does.
pub fn digest_folder(root: &Path) -> Result<String> {
    use rayon::prelude::*;
    use sha2::{Digest, Sha256};
    let mut files = Vec::new();
    let visible = |e: &walkdir::DirEntry| e.depth() == 0 || !e.file_name().to_string_lossy().starts_with('.');
    for entry in walkdir::WalkDir::new(root).follow_links(true).sort_by_file_name().into_iter().filter_entry(visible) {
        let entry = entry.with_context(|| format!("reading {}", root.display()))?;
        if entry.file_type().is_file() {
            files.push(entry.path().to_owned());
        }
    }
    let digests: Vec<String> = files
        .par_iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(format!(
                "{}\t{}",
                path.strip_prefix(root).unwrap_or(path).display(),
                hex::encode(Sha256::digest(&bytes))
            ))
        })
        .collect::<Result<_>>()?;
    Ok(spec::sha256_hex(digests.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_digest_follows_content_not_timestamps() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/x.png"), b"one").unwrap();
        std::fs::write(dir.path().join(".hidden"), b"ignored").unwrap();
        let first = digest_folder(dir.path()).unwrap();
        std::fs::write(dir.path().join("a/x.png"), b"one").unwrap(); // rewritten, same bytes
        std::fs::write(dir.path().join(".hidden"), b"changed").unwrap();
        assert_eq!(digest_folder(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join("a/x.png"), b"two").unwrap();
        assert_ne!(digest_folder(dir.path()).unwrap(), first);
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
