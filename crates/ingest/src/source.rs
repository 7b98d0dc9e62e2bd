//! Where a dataset's images come from, for callers that prepare an ingest
//! run (the conductor): the procedural demo folder, generated once, and a
//! content digest of the files an ingest run would read, listed by the same
//! discovery (and hidden-file rule) as ingestion itself.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use spec::{DatasetSource, DatasetSpec};

use crate::{discover, IngestError};

/// The procedural demo image folder's settings (an experiment's
/// `[data] demo` table): five shape/texture classes, plus broken files when
/// asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoImages {
    pub per_class: usize,
    /// Nominal image size; each image varies around it.
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    /// Also write broken files (to see ingestion report and skip them).
    #[serde(default)]
    pub broken_files: bool,
}

impl DemoImages {
    /// Identifies the folder's content: the images are a pure function of
    /// these settings. (The domain keeps the name it had when the conductor
    /// generated the folder, so existing folders keep their names.)
    pub fn fingerprint(&self) -> String {
        spec::fingerprint("pipeline-demo-images", self).0
    }

    /// `demo-images-<16 hex>`.
    pub fn folder_name(&self) -> String {
        format!("demo-images-{}", &self.fingerprint()[..16])
    }

    fn options(&self) -> demo::DemoOptions {
        demo::DemoOptions {
            per_class: self.per_class,
            width: self.width,
            height: self.height,
            seed: self.seed,
            broken_files: self.broken_files,
        }
    }
}

/// The demo folder for `demo` under `parent` ([`DemoImages::folder_name`]),
/// generated on first use into a temporary sibling renamed into place, so
/// the folder exists only complete. Returns its path.
pub fn demo_images(parent: &Path, demo: &DemoImages) -> Result<PathBuf, IngestError> {
    let dir = parent.join(demo.folder_name());
    if dir.is_dir() {
        return Ok(dir);
    }
    let partial = parent.join(format!(".{}-partial-{}", demo.folder_name(), std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| IngestError::Io { path, source }
    };
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
    }
    demo::generate(&partial, &demo.options()).map_err(io(&partial))?;
    match std::fs::rename(&partial, &dir) {
        Ok(()) => Ok(dir),
        // Another process finished the same folder first: same bytes.
        Err(_) if dir.is_dir() => {
            std::fs::remove_dir_all(&partial).map_err(io(&partial))?;
            Ok(dir)
        }
        Err(e) => Err(io(&dir)(e)),
    }
}

/// Reads a dataset spec file (TOML), with its relative `root` or
/// `manifest` made relative to the spec file's folder, not to the working
/// folder: `data-specs/datasets/demo.toml` saying `root = "../../runs/x"`
/// means the same folder from wherever it is used. Ingest (`--spec`) and
/// the conductor (before [`content_digest`]) both read specs through this.
pub fn read_spec(path: &Path) -> Result<DatasetSpec, IngestError> {
    let text = std::fs::read_to_string(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
    let spec = DatasetSpec::from_toml(&text).map_err(|e| e.in_file("dataset spec", path))?;
    Ok(relative_to(spec, path))
}

/// `spec` with a relative source path joined to the folder of the spec
/// file at `spec_path`. Absolute paths stay as they are.
pub fn relative_to(mut spec: DatasetSpec, spec_path: &Path) -> DatasetSpec {
    let base = spec_path.parent().unwrap_or(Path::new(""));
    let join = |p: String| -> String {
        if Path::new(&p).is_absolute() || base.as_os_str().is_empty() {
            p
        } else {
            // `base` came from a UTF-8 path only if the spec path is one; a
            // non-UTF-8 folder would change here, so it keeps the path
            // relative to the working folder instead of a different one.
            match base.join(&p).to_str() {
                Some(joined) => joined.to_owned(),
                None => p,
            }
        }
    };
    spec.source = match spec.source {
        DatasetSource::Root(p) => DatasetSource::Root(join(p)),
        DatasetSource::Manifest(p) => DatasetSource::Manifest(join(p)),
    };
    spec
}

/// A digest of everything ingesting `spec` would read: the files its
/// discovery lists (same hidden-file, extension, symlink and UTF-8 rules,
/// same order), each as its path relative to the root and the SHA-256 of
/// its bytes, and a manifest's own bytes. Files are read exactly as ingest
/// reads them (special files, dangling links, loops and oversized files are
/// never opened): a file ingest would reject counts as its reject kind, not
/// as an error, and so do discovery's rejects. Content, not timestamps:
/// touching a file changes nothing, editing, adding or removing one does.
pub fn content_digest(spec: &DatasetSpec) -> Result<String, IngestError> {
    let found = discover::discover(&spec.source, spec.include_hidden)?;
    let mut lines = Vec::with_capacity(found.candidates.len() + found.rejects.len() + 1);
    if let DatasetSource::Manifest(manifest) = &spec.source {
        // The manifest holds the labels.
        let path = Path::new(manifest);
        let bytes = std::fs::read(path).map_err(|source| IngestError::Io { path: path.to_path_buf(), source })?;
        lines.push(format!("manifest\t{}", spec::sha256_hex(&bytes)));
    }
    lines.par_extend(found.candidates.par_iter().map(|c| match crate::read_file(c, spec.max_pixels) {
        Ok(bytes) => format!("{}\t{}", c.rel, spec::sha256_hex(&bytes)),
        Err(reject) => format!("{}\t{}", c.rel, reject.kind.name()),
    }));
    lines.extend(found.rejects.iter().map(|r| format!("{}\t{}", r.path, r.kind.name())));
    Ok(spec::sha256_hex(lines.join("\n").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(root: &Path) -> DatasetSpec {
        DatasetSpec::for_root(root.to_str().unwrap())
    }

    #[test]
    fn the_digest_follows_the_content_ingest_reads() {
        let dir = tempfile::tempdir().unwrap();
        for class in ["a", "b"] {
            std::fs::create_dir_all(dir.path().join(class)).unwrap();
            std::fs::write(dir.path().join(class).join("x.png"), class.as_bytes()).unwrap();
        }
        std::fs::write(dir.path().join("a/.hidden.png"), b"ignored").unwrap();
        std::fs::write(dir.path().join("a/notes.txt"), b"ignored").unwrap();
        let first = content_digest(&folder(dir.path())).unwrap();
        // The value of the conductor's former folder digest for the same files.
        let lines = format!("a/x.png\t{}\nb/x.png\t{}", spec::sha256_hex(b"a"), spec::sha256_hex(b"b"));
        assert_eq!(first, spec::sha256_hex(lines.as_bytes()));

        std::fs::write(dir.path().join("a/x.png"), b"a").unwrap(); // rewritten, same bytes
        std::fs::write(dir.path().join("a/.hidden.png"), b"changed").unwrap();
        std::fs::write(dir.path().join("a/notes.txt"), b"changed").unwrap();
        assert_eq!(content_digest(&folder(dir.path())).unwrap(), first);
        let with_hidden = DatasetSpec { include_hidden: true, ..folder(dir.path()) };
        assert_ne!(content_digest(&with_hidden).unwrap(), first, "hidden files count when ingest reads them");
        std::fs::write(dir.path().join("a/x.png"), b"edited").unwrap();
        assert_ne!(content_digest(&folder(dir.path())).unwrap(), first);
    }

    #[test]
    fn a_manifest_digest_covers_its_labels() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.png"), b"one").unwrap();
        std::fs::write(dir.path().join("2.png"), b"two").unwrap();
        let manifest = dir.path().join("labels.csv");
        let spec = DatasetSpec {
            source: DatasetSource::Manifest(manifest.to_str().unwrap().to_owned()),
            ..DatasetSpec::for_root("")
        };
        std::fs::write(&manifest, "path,label\n1.png,cat\n2.png,dog\n").unwrap();
        let first = content_digest(&spec).unwrap();
        std::fs::write(&manifest, "path,label\n1.png,dog\n2.png,cat\n").unwrap();
        assert_ne!(content_digest(&spec).unwrap(), first);
    }

    #[test]
    fn demo_images_are_generated_once_under_their_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let demo = DemoImages { per_class: 2, width: 24, height: 20, seed: 1, broken_files: false };
        let folder = demo_images(dir.path(), &demo).unwrap();
        assert_eq!(folder, dir.path().join(demo.folder_name()));
        assert!(demo.folder_name().starts_with("demo-images-") && demo.folder_name().len() == 12 + 16);
        let digest = content_digest(&DatasetSpec::for_root(folder.to_str().unwrap())).unwrap();
        assert_eq!(demo_images(dir.path(), &demo).unwrap(), folder);
        assert_eq!(content_digest(&DatasetSpec::for_root(folder.to_str().unwrap())).unwrap(), digest);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "no partial folder left behind: {names:?}");
    }
}
