//! Which files to predict: image files named on the command line, and the
//! images in folders (walked recursively, in sorted order, hidden files and
//! folders skipped, only image extensions). No decoding.

use std::path::{Path, PathBuf};

use walkdir::WalkDir;

use crate::ImageError;

/// Whether the file name has one of [`imaging::IMAGE_EXTENSIONS`] (the ones
/// ingestion reads), in any case.
pub fn is_image_path(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| imaging::IMAGE_EXTENSIONS.contains(&e.as_str()))
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Expands `inputs` into the image files to predict, in order: a file is
/// taken as it is (whatever its extension: the user named it); a folder
/// contributes its image files, walked recursively (following links) in
/// file-name order, skipping hidden files and folders. Inputs that do not
/// exist and entries that cannot be read come back as errors, in the order
/// met.
pub fn collect_images(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<ImageError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Err(e) => errors.push(ImageError::new(input, format!("cannot read: {e}"))),
            Ok(m) if !m.is_dir() => files.push(input.clone()),
            Ok(_) => {
                let walker = WalkDir::new(input)
                    .follow_links(true)
                    .sort_by_file_name()
                    .into_iter()
                    .filter_entry(|e| e.depth() == 0 || !is_hidden(e.file_name()));
                for entry in walker {
                    match entry {
                        Ok(e) if e.file_type().is_dir() => {}
                        Ok(e) if is_image_path(e.path()) => files.push(e.into_path()),
                        Ok(_) => {}
                        Err(err) => {
                            let path = err.path().map(Path::to_path_buf).unwrap_or_else(|| input.clone());
                            let reason = match err.loop_ancestor() {
                                Some(a) => format!("symlink loop: points back to its ancestor {}", a.display()),
                                None => err.io_error().map(|e| e.to_string()).unwrap_or_else(|| err.to_string()),
                            };
                            errors.push(ImageError::new(path, reason));
                        }
                    }
                }
            }
        }
    }
    (files, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_sorted_skips_hidden_and_non_images() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for rel in ["b/2.PNG", "b/1.jpg", "a.jpeg", ".hidden/x.png", "b/.y.png", "notes.txt", "c/d/e.webp"] {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"x").unwrap();
        }
        let extra = root.join("notes.txt");
        let (files, errors) = collect_images(&[root.to_path_buf(), extra.clone(), root.join("missing.png")]);
        let rel: Vec<String> =
            files.iter().map(|p| p.strip_prefix(root).unwrap_or(p).to_string_lossy().into_owned()).collect();
        assert_eq!(rel, ["a.jpeg", "b/1.jpg", "b/2.PNG", "c/d/e.webp", "notes.txt"]);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].to_string().contains("missing.png: cannot read"), "{}", errors[0]);
    }
}
