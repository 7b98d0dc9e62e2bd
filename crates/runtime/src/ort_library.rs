//! Finding, fetching and installing `libonnxruntime.so`.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::{cache_dir, RuntimeError, ORT_DYLIB_PATH, TL_PYTHON};

/// The pinned ONNX Runtime release and the wheel it comes from.
pub mod pinned {
    /// ONNX Runtime version; the `ort` crate's `api-19` feature accepts it.
    pub const ORT_VERSION: &str = "1.32.0";
    /// The wheel `pip download` picks for the arguments in [`PIP_ARGS`].
    pub const ORT_WHEEL: &str = "onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl";
    pub const ORT_WHEEL_SHA256: &str = "5a34fc4dfeb5a7b4a74c95dcba1e773d722abda720b474edf1b0c419dc6d163d";
    /// The library inside the wheel; it exports ONNX Runtime's C API.
    pub const LIBRARY_IN_WHEEL: &str = "onnxruntime/capi/libonnxruntime.so.1.32.0";
    pub const LIBRARY_SHA256: &str = "6c1585d1bbf45b0712ea4a21b705c5fcb4ba04ff2e30f1fbf81a49faf658638f";
    /// Arguments to `python -m pip download`, besides the target folder.
    /// The platform and Python version are fixed so that every machine
    /// gets the same wheel, whatever its own Python; the library inside does
    /// not depend on either.
    pub const PIP_ARGS: &[&str] = &[
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--platform",
        "manylinux_2_28_x86_64",
        "--disable-pip-version-check",
        "onnxruntime==1.32.0",
    ];
}

const LIBRARY_FILE: &str = "libonnxruntime.so";
/// Written next to the library once it is complete; holds its SHA-256.
const STAMP_FILE: &str = "libonnxruntime.so.sha256";

/// Where the cached library lives: `<cache>/ort/1.32.0/libonnxruntime.so`.
pub fn ort_library_cache_path() -> Result<PathBuf, RuntimeError> {
    Ok(cache_dir()?.join("ort").join(pinned::ORT_VERSION).join(LIBRARY_FILE))
}

/// The ONNX Runtime library to load: `$ORT_DYLIB_PATH` if set, else the
/// cached pinned library. Does not fetch anything; if the library is not
/// there, the error says to run `cargo xtask setup`.
pub fn ort_library() -> Result<PathBuf, RuntimeError> {
    if let Some(path) = std::env::var_os(ORT_DYLIB_PATH).filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() { Ok(path) } else { Err(RuntimeError::OrtDylibPathMissing { path }) };
    }
    let path = ort_library_cache_path()?;
    if is_installed(&path) {
        Ok(path)
    } else {
        Err(RuntimeError::OrtNotSetUp { version: pinned::ORT_VERSION, path })
    }
}

/// Makes sure the pinned library is in the cache, fetching the wheel with
/// `pip download` if it is not; returns its path. Idempotent: a complete
/// install is left alone. `$ORT_DYLIB_PATH` is not consulted: this sets up
/// the project's own copy.
pub fn ensure_ort_library() -> Result<PathBuf, RuntimeError> {
    let path = ort_library_cache_path()?;
    if is_installed(&path) {
        return Ok(path);
    }
    let _lock = lock_install(&path)?;
    if is_installed(&path) {
        return Ok(path);
    }
    let download_dir =
        tempfile::tempdir().map_err(RuntimeError::io("cannot create a temp folder in", std::env::temp_dir()))?;
    download_wheel(download_dir.path())?;
    install_locked(&download_dir.path().join(pinned::ORT_WHEEL), &path)?;
    Ok(path)
}

/// Takes the install lock beside the library (a second process waits, then
/// finds it installed) and removes what killed installs left there.
fn lock_install(library: &Path) -> Result<atomic_file::Lock, RuntimeError> {
    let lock =
        atomic_file::Lock::exclusive(&library.with_file_name("install.lock"), "the ONNX Runtime library install")
            .map_err(|e| RuntimeError::Io { what: "cannot lock", path: e.path, source: e.source })?;
    if let Some(folder) = library.parent() {
        atomic_file::remove_stale_partials(folder, true);
    }
    Ok(lock)
}

/// Installs the library from an already downloaded copy of the pinned wheel
/// (for machines without a package index); checks both checksums.
pub fn install_ort_from_wheel(wheel: &Path) -> Result<PathBuf, RuntimeError> {
    let destination = ort_library_cache_path()?;
    let _lock = lock_install(&destination)?;
    install_locked(wheel, &destination)?;
    Ok(destination)
}

/// Installs the pinned library from `wheel`; the caller holds the lock.
fn install_locked(wheel: &Path, destination: &Path) -> Result<(), RuntimeError> {
    install_from_wheel(wheel, pinned::ORT_WHEEL_SHA256, pinned::LIBRARY_IN_WHEEL, pinned::LIBRARY_SHA256, destination)
}

/// A library counts as installed when its stamp holds the pinned checksum
/// (the stamp is written only after the library is complete, so a crash in
/// between leaves no stamp). Hashing 35 MB at every start would be waste.
fn is_installed(library: &Path) -> bool {
    let stamp = library.with_file_name(STAMP_FILE);
    library.is_file() && std::fs::read_to_string(stamp).is_ok_and(|s| s.trim() == pinned::LIBRARY_SHA256)
}

fn download_wheel(into: &Path) -> Result<(), RuntimeError> {
    let python = std::env::var_os(TL_PYTHON).filter(|p| !p.is_empty()).unwrap_or_else(|| OsString::from("python3"));
    crate::venv::run(Command::new(&python).args(["-m", "pip"]).args(pinned::PIP_ARGS).arg("-d").arg(into))?;
    if !into.join(pinned::ORT_WHEEL).is_file() {
        let got: Vec<String> = std::fs::read_dir(into)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        return Err(RuntimeError::Python(format!(
            "pip downloaded {got:?}, not the pinned {}; check the pip arguments in runtime::pinned",
            pinned::ORT_WHEEL
        )));
    }
    Ok(())
}

/// Checks the wheel's checksum, extracts `member`, checks its checksum, and
/// writes it to `destination` atomically (temp file, then rename), followed
/// by its stamp.
fn install_from_wheel(
    wheel: &Path,
    wheel_sha256: &str,
    member: &str,
    member_sha256: &str,
    destination: &Path,
) -> Result<(), RuntimeError> {
    let wheel_bytes = std::fs::read(wheel).map_err(RuntimeError::io("cannot read", wheel))?;
    check_sha256(&file_label(wheel), &wheel_bytes, wheel_sha256)?;

    let wheel_error = |source: zip::result::ZipError| RuntimeError::Wheel {
        wheel: wheel.to_owned(),
        member: member.to_owned(),
        source,
    };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(wheel_bytes)).map_err(wheel_error)?;
    let mut entry = archive.by_name(member).map_err(wheel_error)?;
    let mut library = Vec::with_capacity(entry.size() as usize);
    entry.read_to_end(&mut library).map_err(|e| wheel_error(e.into()))?;
    check_sha256(member, &library, member_sha256)?;

    let folder = destination.parent().expect("the destination is a file in a folder");
    std::fs::create_dir_all(folder).map_err(RuntimeError::io("cannot create", folder))?;
    write_atomically(destination, &library, 0o755)?;
    let stamp = destination.with_file_name(STAMP_FILE);
    write_atomically(&stamp, format!("{member_sha256}\n").as_bytes(), 0o644)
}

/// Writes through a per-process temporary sibling (`.<name>.<pid>.partial`,
/// which the next install lock holder removes if this process dies), then
/// renames it into place and syncs the folder.
fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), RuntimeError> {
    let partial = atomic_file::partial_path(path);
    let written = (|| {
        let mut file = std::fs::File::create(&partial).map_err(RuntimeError::io("cannot create", &partial))?;
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(RuntimeError::io("cannot write", &partial))?;
        set_mode(&partial, mode)?;
        atomic_file::rename(&partial, path).map_err(|e| RuntimeError::Io {
            what: "cannot move into place",
            path: e.path,
            source: e.source,
        })
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), RuntimeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(RuntimeError::io("cannot set permissions of", path))
}

#[cfg(not(unix))]
fn set_mode(_: &Path, _: u32) -> Result<(), RuntimeError> {
    Ok(())
}

fn check_sha256(label: &str, bytes: &[u8], expected: &str) -> Result<(), RuntimeError> {
    let actual = hex::encode(Sha256::digest(bytes));
    if actual == expected {
        Ok(())
    } else {
        Err(RuntimeError::Checksum { file: label.to_owned(), expected: expected.to_owned(), actual })
    }
}

fn file_label(path: &Path) -> String {
    path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMBER: &str = "pkg/capi/libfake.so.1";

    fn sha256(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A wheel-shaped zip holding one member (stored: the crate is built
    /// without a compressor).
    fn fake_wheel(folder: &Path, library: &[u8]) -> PathBuf {
        let path = folder.join("fake-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        zip.start_file("pkg/__init__.py", options).unwrap();
        zip.start_file(MEMBER, options).unwrap();
        zip.write_all(library).unwrap();
        zip.finish().unwrap();
        path
    }

    #[test]
    fn installs_the_member_and_its_stamp_atomically() {
        let folder = tempfile::tempdir().unwrap();
        let library = b"\x7fELF not really a library".to_vec();
        let wheel = fake_wheel(folder.path(), &library);
        let wheel_sha = sha256(&std::fs::read(&wheel).unwrap());
        let destination = folder.path().join("cache/ort/9.9/libonnxruntime.so");

        install_from_wheel(&wheel, &wheel_sha, MEMBER, &sha256(&library), &destination).unwrap();

        assert_eq!(std::fs::read(&destination).unwrap(), library);
        let stamp = std::fs::read_to_string(destination.with_file_name(STAMP_FILE)).unwrap();
        assert_eq!(stamp.trim(), sha256(&library));
        let leftovers: Vec<_> =
            std::fs::read_dir(destination.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers.len(), 2, "only the library and its stamp: {leftovers:?}");
    }

    #[test]
    fn a_wrong_checksum_installs_nothing() {
        let folder = tempfile::tempdir().unwrap();
        let library = b"library bytes".to_vec();
        let wheel = fake_wheel(folder.path(), &library);
        let destination = folder.path().join("out/libonnxruntime.so");

        let wrong_wheel = install_from_wheel(&wheel, &sha256(b"other"), MEMBER, &sha256(&library), &destination);
        assert!(matches!(wrong_wheel, Err(RuntimeError::Checksum { .. })), "{wrong_wheel:?}");

        let wheel_sha = sha256(&std::fs::read(&wheel).unwrap());
        let wrong_member = install_from_wheel(&wheel, &wheel_sha, MEMBER, &sha256(b"other"), &destination);
        assert!(matches!(wrong_member, Err(RuntimeError::Checksum { .. })), "{wrong_member:?}");

        let missing = install_from_wheel(&wheel, &wheel_sha, "pkg/none.so", &sha256(&library), &destination);
        assert!(matches!(missing, Err(RuntimeError::Wheel { .. })), "{missing:?}");
        assert!(!destination.exists());
    }

    #[test]
    fn installs_wait_for_each_other_and_the_holder_clears_dead_leftovers() {
        let folder = tempfile::tempdir().unwrap();
        let library = b"library bytes".to_vec();
        let wheel = fake_wheel(folder.path(), &library);
        let wheel_sha = sha256(&std::fs::read(&wheel).unwrap());
        let destination = folder.path().join("ort/9.9/libonnxruntime.so");
        std::fs::create_dir_all(destination.parent().unwrap()).unwrap();
        // A killed install's half-written library (pid 4294967 is never alive here).
        let dead = destination.with_file_name(".libonnxruntime.so.4294967.partial");
        std::fs::write(&dead, b"half").unwrap();

        let held = lock_install(&destination).unwrap();
        assert!(!dead.exists(), "the lock holder removes a dead install's leftovers");
        let (tx, rx) = std::sync::mpsc::channel();
        let second = {
            let (destination, wheel, wheel_sha, library) =
                (destination.clone(), wheel.clone(), wheel_sha.clone(), library.clone());
            std::thread::spawn(move || {
                let _lock = lock_install(&destination).unwrap();
                // The first install finished while this one waited: it finds the file complete.
                let found = std::fs::read(&destination).ok();
                tx.send(()).unwrap();
                if found.is_none() {
                    install_from_wheel(&wheel, &wheel_sha, MEMBER, &sha256(&library), &destination).unwrap();
                }
                found
            })
        };
        assert!(rx.recv_timeout(std::time::Duration::from_millis(300)).is_err(), "the second install did not wait");
        install_from_wheel(&wheel, &wheel_sha, MEMBER, &sha256(&library), &destination).unwrap();
        drop(held);
        assert_eq!(second.join().unwrap(), Some(library.clone()));
        let mut names: Vec<_> = std::fs::read_dir(destination.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["install.lock", "libonnxruntime.so", STAMP_FILE]);
    }

    #[test]
    fn a_library_without_its_stamp_is_not_installed() {
        let folder = tempfile::tempdir().unwrap();
        let library = folder.path().join(LIBRARY_FILE);
        std::fs::write(&library, b"partial").unwrap();
        assert!(!is_installed(&library));
        std::fs::write(library.with_file_name(STAMP_FILE), "0000").unwrap();
        assert!(!is_installed(&library));
        std::fs::write(library.with_file_name(STAMP_FILE), pinned::LIBRARY_SHA256).unwrap();
        assert!(is_installed(&library));
    }
}
