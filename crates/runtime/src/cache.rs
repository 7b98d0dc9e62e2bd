use std::path::PathBuf;

use crate::RuntimeError;

/// The project's cache folder (see [`contracts::cache_dir`]). Not created here.
pub fn cache_dir() -> Result<PathBuf, RuntimeError> {
    contracts::cache_dir().map_err(|_| RuntimeError::NoCacheDir)
}
