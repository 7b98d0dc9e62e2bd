//! `cargo xtask pipeline`: sets up (ONNX Runtime, the training venv),
//! builds the stage binaries and the conductor in release mode, then runs
//! `target/release/pipeline` with the arguments given (see
//! `crates/pipeline/src/main.rs`; `cargo xtask pipeline --help` shows
//! them). The conductor is a binary of its own so that xtask stays light to
//! build.

use std::process::Command;

use anyhow::Result;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Arguments for the pipeline binary: --experiment, --set, --data, --model, --force, --runs.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// `cargo xtask gc`: the arguments for `pipeline gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    /// Arguments for `pipeline gc`: --runs, --features-cache, --dry-run.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

/// Builds the conductor (release) and runs `pipeline gc` with the arguments given.
pub fn gc(args: &GcArgs) -> Result<()> {
    let bins = util::release_bins(&["pipeline"])?;
    util::run(Command::new(bins.join("pipeline")).arg("gc").args(&args.rest))
}

pub fn run(args: &Args) -> Result<()> {
    crate::setup()?;
    let bins = util::release_bins(&["ingest", "features", "head-cli", "finetune", "predict", "pipeline"])?;
    util::run(Command::new(bins.join("pipeline")).args(&args.rest))
}
