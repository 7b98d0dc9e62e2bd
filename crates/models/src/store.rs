//! The one gate every obtained model file passes: check its size and
//! SHA-256 against the spec, then move it into the cache atomically.
//!
//! A file that passed is stamped (`<file>.sha256` holds its checksum), so
//! later runs trust it without hashing hundreds of megabytes again. A file
//! in the cache without a stamp was placed there by hand: it is verified
//! (and stamped) on first use.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::ModelError;

/// What a file must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Expected {
    /// Lowercase hex.
    pub sha256: String,
    /// Checked before hashing when known (a cheap early answer).
    pub size: Option<u64>,
}

impl Expected {
    pub fn new(sha256: &str, size: Option<u64>) -> Expected {
        Expected { sha256: sha256.trim().to_ascii_lowercase(), size }
    }
}

/// The SHA-256 (lowercase hex) and length of a file, read in chunks so a
/// 500 MB model does not have to fit in memory twice.
pub(crate) fn sha256_file(path: &Path) -> Result<(String, u64), ModelError> {
    let io_error = |source| ModelError::Io { path: path.to_owned(), source };
    let mut file = std::fs::File::open(path).map_err(io_error)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut length = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(io_error)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        length += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), length))
}

/// Checks `file` against `expected`. `removed` only shapes the error
/// message: whether the caller deletes the file after a mismatch.
pub(crate) fn verify(model: &str, file: &Path, expected: &Expected, removed: bool) -> Result<(), ModelError> {
    let mismatch = |what, expected: String, actual: String| ModelError::Mismatch {
        model: model.to_owned(),
        file: file.to_owned(),
        what,
        expected,
        actual,
        removed,
    };
    let length = std::fs::metadata(file).map_err(|source| ModelError::Io { path: file.to_owned(), source })?.len();
    if let Some(size) = expected.size.filter(|&size| size != length) {
        return Err(mismatch("size", format!("{size} bytes"), format!("{length} bytes")));
    }
    let (actual, _) = sha256_file(file)?;
    if actual != expected.sha256 {
        return Err(mismatch("SHA-256", expected.sha256.clone(), actual));
    }
    Ok(())
}

/// Verifies `candidate` (a download or an extracted file, in the same
/// folder as `destination`) and renames it into place, then stamps it. A
/// candidate that fails is deleted: it can only be refetched, not repaired.
pub(crate) fn verify_and_store(
    model: &str,
    candidate: &Path,
    expected: &Expected,
    destination: &Path,
) -> Result<(), ModelError> {
    if let Err(error) = verify(model, candidate, expected, true) {
        let _ = std::fs::remove_file(candidate);
        return Err(error);
    }
    atomic_file::rename(candidate, destination).map_err(|e| ModelError::Io { path: e.path, source: e.source })?;
    write_stamp(destination, &expected.sha256)
}

/// Whether `destination` already holds the expected file. A stamped file is
/// trusted if its size still matches; an unstamped one (placed by hand) is
/// verified now. A wrong file is left in place, since only a person can
/// have put it there, and the error says so.
pub(crate) fn is_in_cache(model: &str, destination: &Path, expected: &Expected) -> Result<bool, ModelError> {
    let Ok(metadata) = std::fs::metadata(destination) else {
        return Ok(false);
    };
    let size_matches = expected.size.is_none_or(|size| size == metadata.len());
    let stamped = std::fs::read_to_string(stamp_path(destination)).is_ok_and(|s| s.trim() == expected.sha256);
    if stamped && size_matches {
        return Ok(true);
    }
    verify(model, destination, expected, false)?;
    write_stamp(destination, &expected.sha256)?;
    Ok(true)
}

fn stamp_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Written after the file is complete and verified, atomically, so a crash
/// leaves either no stamp or a true one.
fn write_stamp(file: &Path, sha256: &str) -> Result<(), ModelError> {
    atomic_file::write(&stamp_path(file), format!("{sha256}\n").as_bytes())
        .map_err(|e| ModelError::Io { path: e.path, source: e.source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expected_for(bytes: &[u8]) -> Expected {
        Expected::new(&spec::sha256_hex(bytes), Some(bytes.len() as u64))
    }

    #[test]
    fn a_good_candidate_is_moved_into_place_and_stamped() {
        let dir = tempfile::tempdir().unwrap();
        let (candidate, destination) = (dir.path().join("m.onnx.partial"), dir.path().join("m.onnx"));
        std::fs::write(&candidate, b"model bytes").unwrap();
        verify_and_store("m", &candidate, &expected_for(b"model bytes"), &destination).unwrap();
        assert!(!candidate.exists());
        assert_eq!(std::fs::read(&destination).unwrap(), b"model bytes");
        assert!(is_in_cache("m", &destination, &expected_for(b"model bytes")).unwrap());
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["m.onnx", "m.onnx.sha256"]);
    }

    #[test]
    fn a_bad_candidate_is_deleted_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let (candidate, destination) = (dir.path().join("m.partial"), dir.path().join("m.onnx"));
        std::fs::write(&candidate, b"model bytez").unwrap();
        let err = verify_and_store("m", &candidate, &expected_for(b"model bytes"), &destination).unwrap_err();
        let text = err.to_string();
        assert!(text.contains(&spec::sha256_hex(b"model bytes")) && text.contains(&spec::sha256_hex(b"model bytez")));
        assert!(text.contains("deleted"), "{text}");
        assert!(!candidate.exists() && !destination.exists());

        std::fs::write(&candidate, b"short").unwrap();
        let err = verify_and_store("m", &candidate, &expected_for(b"model bytes"), &destination).unwrap_err();
        assert!(err.to_string().contains("expected 11 bytes, got 5 bytes"), "{err}");
    }

    #[test]
    fn a_file_placed_by_hand_is_verified_once_and_kept_when_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let placed = dir.path().join("m.onnx");
        assert!(!is_in_cache("m", &placed, &expected_for(b"right")).unwrap());
        std::fs::write(&placed, b"wrong").unwrap();
        let err = is_in_cache("m", &placed, &expected_for(b"right")).unwrap_err();
        assert!(err.to_string().contains("left in place"), "{err}");
        assert!(placed.exists());
        std::fs::write(&placed, b"right").unwrap();
        assert!(is_in_cache("m", &placed, &expected_for(b"right")).unwrap());
        assert_eq!(std::fs::read_to_string(stamp_path(&placed)).unwrap().trim(), spec::sha256_hex(b"right"));
    }
}
