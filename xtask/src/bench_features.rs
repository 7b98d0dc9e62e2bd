//! The features benchmark: builds and runs `features-bench` (an example of
//! the `features` crate) with the `onnxruntime` Python package as the
//! baseline, measured in the same run, and returns its Markdown section.
//!
//! Wiring (in `main.rs` and `bench.rs`):
//! ```ignore
//! mod bench_features;
//! // in bench::run:
//! if wanted("features") {
//!     let section = crate::bench_features::run()?;
//!     write_section("features", &section)?;
//! }
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::util;

/// The throwaway venv with the Python baseline's packages.
const VENV: &str = "target/bench/venv-ort";
/// Where the benchmark keeps its datasets, caches and results.json.
const WORK: &str = "target/bench/features";

/// Runs the benchmark (a few minutes; the first run also generates the
/// 550 MB VGG16 into the cache) and returns its Markdown section.
pub fn run() -> Result<String> {
    let root = util::workspace_root();
    let python = venv(&root)?;
    util::cargo(&["build", "--release", "--quiet", "-p", "features", "--example", "features-bench"])?;
    let exe = root.join("target/release/examples/features-bench");
    let out = Command::new(&exe)
        .current_dir(&root)
        .arg("--python")
        .arg(&python)
        .arg("--work")
        .arg(root.join(WORK))
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {}", exe.display()))?;
    if !out.status.success() {
        bail!("{} failed with {}", exe.display(), out.status);
    }
    String::from_utf8(out.stdout).context("features-bench printed non-UTF-8 text")
}

/// Makes the venv once: onnxruntime pinned to the library the project loads.
fn venv(root: &Path) -> Result<PathBuf> {
    util::throwaway_venv(&root.join(VENV), &["onnxruntime==1.32.0", "numpy", "pyarrow", "duckdb"])
}
