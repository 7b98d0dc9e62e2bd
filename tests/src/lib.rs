//! End-to-end tests live in `tests/`; this library holds what several of
//! them share: a run folder's digests (golden, chaos) and watching the
//! processes a test starts (chaos).

pub mod digest;
pub mod process;

use std::path::{Path, PathBuf};

/// `target/<profile>`, where cargo put this workspace's binaries: the
/// folder above the running test executable's `deps/`.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent().and_then(Path::parent).map(Path::to_owned).unwrap_or_default()
}
