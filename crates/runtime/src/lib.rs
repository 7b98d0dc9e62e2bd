//! Provisions ONNX Runtime for the project: finds or fetches
//! `libonnxruntime.so`, loads it into the `ort` crate, and (for fine-tuning)
//! makes the Python venv with ONNX Runtime's training API.
//!
//! The library comes from the PyPI `onnxruntime` wheel, pinned by version
//! and SHA-256 ([`pinned`]); `pip download` fetches it and this crate
//! extracts the one file it needs into a cache folder ([`cache_dir`]).
//! Setting up is explicit ([`ensure_ort_library`], called by
//! `cargo xtask setup`); everything else only looks ([`ort_library`]) and
//! fails with a message that says what to run.
//!
//! This crate knows nothing of models, datasets or training; it only puts
//! the runtime where the stages can load it.

mod cache;
mod error;
mod ort_library;
mod session;
mod venv;

use std::sync::{Mutex, OnceLock};

/// The `ort` crate this one loads the runtime into; stages use it through
/// this re-export so that there is one version of it.
pub use ort;

pub use cache::cache_dir;
pub use error::RuntimeError;
pub use ort::environment::Environment;
pub use ort_library::{ensure_ort_library, install_ort_from_wheel, ort_library, ort_library_cache_path, pinned};
pub use session::{open_session, ModelSource, SessionOptions};
pub use venv::{ensure_training_venv, training_venv_path, TrainingVenv, TRAINING_LOCK, TRAINING_REQUIREMENTS};

/// The environment variable naming a `libonnxruntime.so` to use instead of
/// the cached one (also read by `ort` itself).
pub const ORT_DYLIB_PATH: &str = "ORT_DYLIB_PATH";
/// The environment variable that overrides the cache folder.
pub use contracts::TL_CACHE_DIR;
/// The environment variable naming the Python interpreter used to run pip
/// (default `python3`).
pub const TL_PYTHON: &str = "TL_PYTHON";
/// What to run when the runtime is not set up.
pub const SETUP_HINT: &str = "run `cargo xtask setup`";

/// Loads ONNX Runtime ([`ort_library`]) into `ort` and creates the
/// process's ONNX Runtime environment, once; later calls return the same
/// environment. Stages open sessions with [`open_session`].
pub fn init_ort() -> Result<&'static Environment, RuntimeError> {
    static ENVIRONMENT: OnceLock<Environment> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());

    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    // `ort` allows one environment per process; serialise first calls.
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(environment) = ENVIRONMENT.get() {
        return Ok(environment);
    }
    let library = ort_library()?;
    let load_error =
        |source: Box<dyn std::error::Error + Send + Sync>| RuntimeError::OrtLoad { path: library.clone(), source };
    let environment = ort::init_from(&library)
        .map_err(|e| load_error(e.into()))?
        .with_name("tl-vision")
        .with_telemetry(false)
        .build()
        .map_err(|e| load_error(e.into()))?;
    Ok(ENVIRONMENT.get_or_init(|| environment))
}
