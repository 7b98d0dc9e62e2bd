use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The workspace root: xtask's manifest folder's parent.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs `cargo` with the given arguments, failing if it fails.
pub fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(cargo).args(args))
}

/// Runs a command with inherited stdio, failing with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = format!("{cmd:?}");
    eprintln!("$ {}", line.replace('"', ""));
    let status = cmd.status().with_context(|| format!("starting {line}"))?;
    if !status.success() {
        bail!("{line} failed with {status}");
    }
    Ok(())
}

/// Builds the release binaries of the given packages and returns the folder
/// they are in.
pub fn release_bins(packages: &[&str]) -> Result<PathBuf> {
    let mut args = vec!["build", "--release", "--quiet"];
    for p in packages {
        args.extend(["-p", p]);
    }
    cargo(&args)?;
    Ok(workspace_root().join("target").join("release"))
}

/// A throwaway Python venv for benchmark baselines, made once in `dir`
/// with `packages` installed; returns its interpreter.
pub fn throwaway_venv(dir: &Path, packages: &[&str]) -> Result<PathBuf> {
    let python = dir.join("bin/python");
    if !dir.join(".complete").exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(dir))?;
        run(Command::new(&python).args(["-m", "pip", "install", "--quiet"]).args(packages))?;
        std::fs::write(dir.join(".complete"), b"")?;
    }
    Ok(python)
}
