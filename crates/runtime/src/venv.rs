//! The Python venv holding ONNX Runtime's on-device training API, which no
//! registry ships as a C library (see the design brief, section 2).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{cache_dir, RuntimeError, TL_PYTHON};

/// Pinned packages. onnxruntime-training-cpu 1.19.2 is the last release with
/// the training API and ships for CPython 3.11 only; onnx 1.18 and later
/// write IR versions that ORT 1.19 refuses.
pub const TRAINING_REQUIREMENTS: &[&str] = &["onnxruntime-training-cpu==1.19.2", "onnx==1.17.0", "numpy==1.26.4"];
/// The Python the training wheel is built for.
pub const TRAINING_PYTHON_VERSION: &str = "3.11";

/// Written into the venv once the install is complete and checked.
const STAMP_FILE: &str = "tl-vision-requirements.txt";

/// Checks the venv, including that the training submodules import without
/// torch. `onnxruntime.training`'s `__init__` eagerly imports a torch-based
/// module, so a bare package is registered in its place first; the training
/// code in this project must do the same.
const CHECK_SCRIPT: &str = r#"
import importlib.util, sys, types
spec = importlib.util.find_spec("onnxruntime.training")
package = types.ModuleType("onnxruntime.training")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["onnxruntime.training"] = package
import onnxruntime.training.api, onnxruntime.training.artifacts
import numpy, onnx, onnxruntime
print(onnxruntime.__version__, onnx.__version__, numpy.__version__)
"#;

/// A ready training venv.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrainingVenv {
    pub dir: PathBuf,
    /// The venv's interpreter (for `PYO3_PYTHON`, for example).
    pub python: PathBuf,
    /// Its site-packages folder, to put on `sys.path` of an embedded Python.
    pub site_packages: PathBuf,
}

/// Where the venv lives: `<cache>/venv/ort-training-1.19.2-py3.11`.
pub fn training_venv_path() -> Result<PathBuf, RuntimeError> {
    Ok(cache_dir()?.join("venv").join(format!("ort-training-1.19.2-py{TRAINING_PYTHON_VERSION}")))
}

/// Makes sure the training venv exists with the pinned packages, creating
/// it with `python3.11 -m venv` and pip if not; returns its paths.
/// Idempotent. The interpreter is `$TL_PYTHON`, else `python3.11`, else
/// `python3` if that is 3.11.
pub fn ensure_training_venv() -> Result<TrainingVenv, RuntimeError> {
    let dir = training_venv_path()?;
    let venv = venv_paths(&dir);
    if is_complete(&dir) {
        return Ok(venv);
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(RuntimeError::io("cannot remove the incomplete venv", &dir))?;
    }
    let python = find_python()?;
    run(Command::new(&python).args(["-m", "venv"]).arg(&dir))?;
    run(Command::new(&venv.python)
        .args(["-m", "pip", "install", "--disable-pip-version-check", "--no-input"])
        .args(TRAINING_REQUIREMENTS))?;
    let versions = run(Command::new(&venv.python).args(["-c", CHECK_SCRIPT]))?;
    if versions.split_whitespace().collect::<Vec<_>>() != ["1.19.2", "1.17.0", "1.26.4"] {
        return Err(RuntimeError::Python(format!(
            "the venv at {} has versions {versions:?}, not the pinned ones",
            dir.display()
        )));
    }
    std::fs::write(dir.join(STAMP_FILE), stamp_text())
        .map_err(RuntimeError::io("cannot write", dir.join(STAMP_FILE)))?;
    Ok(venv)
}

impl TrainingVenv {
    /// The folder holding the base interpreter's `libpython3.11.so` (what an
    /// embedding binary must load, through an rpath or `LD_LIBRARY_PATH`).
    /// Asks the interpreter, so it costs a process start.
    pub fn libpython_dir(&self) -> Result<PathBuf, RuntimeError> {
        let script = "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))";
        let dir = PathBuf::from(run(Command::new(&self.python).args(["-c", script]))?.trim());
        let library = dir.join(format!("libpython{TRAINING_PYTHON_VERSION}.so"));
        if library.exists() {
            Ok(dir)
        } else {
            Err(RuntimeError::Python(format!(
                "{} does not exist: this Python was built without a shared libpython, \
                 so it cannot be embedded; use one built with --enable-shared",
                library.display()
            )))
        }
    }
}

fn venv_paths(dir: &Path) -> TrainingVenv {
    TrainingVenv {
        dir: dir.to_owned(),
        python: dir.join("bin").join("python"),
        site_packages: dir.join("lib").join(format!("python{TRAINING_PYTHON_VERSION}")).join("site-packages"),
    }
}

fn stamp_text() -> String {
    TRAINING_REQUIREMENTS.join("\n") + "\n"
}

fn is_complete(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(STAMP_FILE)).is_ok_and(|s| s == stamp_text()) && venv_paths(dir).python.exists()
}

fn find_python() -> Result<OsString, RuntimeError> {
    let candidates: Vec<OsString> = match std::env::var_os(TL_PYTHON).filter(|p| !p.is_empty()) {
        Some(python) => vec![python],
        None => vec!["python3.11".into(), "python3".into()],
    };
    for python in &candidates {
        let version = Command::new(python).args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"]).output();
        if let Ok(output) = version {
            if output.status.success() && String::from_utf8_lossy(&output.stdout).trim() == TRAINING_PYTHON_VERSION {
                return Ok(python.clone());
            }
        }
    }
    Err(RuntimeError::Python(format!(
        "no Python {TRAINING_PYTHON_VERSION} found (tried {candidates:?}); the training wheel \
         exists for CPython {TRAINING_PYTHON_VERSION} only: install it or set TL_PYTHON"
    )))
}

/// Runs a command, returning its stdout, or an error carrying its output.
pub(crate) fn run(command: &mut Command) -> Result<String, RuntimeError> {
    let shown = format!("{command:?}");
    let output = command.output().map_err(|source| RuntimeError::Spawn { command: shown.clone(), source })?;
    if !output.status.success() {
        return Err(RuntimeError::Command {
            command: shown,
            status: output.status.to_string(),
            output: format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
