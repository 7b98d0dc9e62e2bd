//! `cargo xtask`: the project's conductor. It needs nothing but cargo.
//!
//! - `cargo xtask pipeline`   run every stage that exists on a dataset (the
//!   built-in demo by default)
//! - `cargo xtask gc`       remove store entries and feature-cache folders
//!   no run refers to (`pipeline gc`; `--dry-run` lists them)
//! - `cargo xtask test`       formatting, lints and the whole test suite
//! - `cargo xtask bench`      the benchmarks, written to BENCHMARKS.md
//! - `cargo xtask chaos`      the fault-injection suite in full (kills,
//!   races, hostile input); its counts go to BENCHMARKS.md
//! - `cargo xtask setup`      fetch what the stages need at run time (the
//!   ONNX Runtime library, the training venv) from the package registries
//! - `cargo xtask fetch-model NAME`  fetch, verify and cut a model
//! - `cargo xtask inspect-model FILE`  list an ONNX file's tensors, shapes
//!   and initializers (to write a model spec; docs/backbones.md)
//! - `cargo xtask demo-data`  write the procedural demo image folder

mod bench;
mod bench_features;
mod bench_finetune;
mod bench_scale;
mod chaos;
mod fetch_model;
mod inspect_model;
mod pipeline;
mod util;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Developer and pipeline commands for this workspace")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the pipeline end to end (default: the built-in demo dataset).
    Pipeline(pipeline::Args),
    /// Remove store entries and feature-cache folders no run refers to (pipeline gc; --dry-run lists them).
    Gc(pipeline::GcArgs),
    /// Fetch the ONNX Runtime library (pinned, checked) and make the Python
    /// venv with ONNX Runtime's training API, in the cache.
    Setup,
    /// Set up, check formatting and lints, then run every test.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        rest: Vec<String>,
    },
    /// Run the benchmarks and write BENCHMARKS.md.
    Bench(bench::Args),
    /// The fault-injection suite in full: kills, races, hostile specs and folders; counts to BENCHMARKS.md.
    Chaos(chaos::Args),
    /// Fetch, verify and cut a model into the cache (a name in data-specs/models, or a spec path).
    FetchModel { name: String },
    /// List an ONNX file's inputs, outputs, node outputs (op, inferred shape) and initializers, marking likely conv-base cut points.
    InspectModel(inspect_model::Args),
    /// Write the procedural demo image folder.
    DemoData {
        #[arg(long, default_value = "runs/demo-images")]
        out: PathBuf,
        #[arg(long, default_value_t = 40)]
        per_class: usize,
        #[arg(long, default_value_t = 160)]
        width: u32,
        #[arg(long, default_value_t = 120)]
        height: u32,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Leave out the deliberately broken files.
        #[arg(long)]
        no_broken: bool,
    },
}

fn main() -> Result<()> {
    let root = util::workspace_root();
    let invoked_from = std::env::current_dir()?;
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Command::Pipeline(args) => pipeline::run(&args),
        Command::Gc(args) => pipeline::gc(&args),
        Command::Setup => setup(),
        Command::FetchModel { name } => fetch_model::run(&name),
        Command::InspectModel(args) => inspect_model::run(&args, &invoked_from),
        Command::Test { rest } => test(&rest),
        Command::Bench(args) => bench::run(&args),
        Command::Chaos(args) => chaos::run(&args),
        Command::DemoData { out, per_class, width, height, seed, no_broken } => {
            let opts = demo::DemoOptions { per_class, width, height, seed, broken_files: !no_broken };
            let made = demo::generate(&out, &opts)?;
            println!(
                "wrote {} images in {} classes (+{} broken, {} duplicate, {} conflicting) to {}",
                made.images_per_class.iter().map(|(_, n)| n).sum::<usize>(),
                made.images_per_class.len(),
                made.rejects.len(),
                made.duplicates.len(),
                made.conflicts.len(),
                out.display()
            );
            Ok(())
        }
    }
}

pub(crate) fn setup() -> Result<()> {
    let library = runtime::ensure_ort_library()?;
    println!("ONNX Runtime library: {}", library.display());
    let venv = runtime::ensure_training_venv()?;
    println!("ONNX Runtime training venv: {}", venv.dir.display());
    Ok(())
}

fn test(rest: &[String]) -> Result<()> {
    setup()?;
    util::cargo(&["fmt", "--all", "--check"])?;
    util::cargo(&["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"])?;
    // The end-to-end tests run the stage binaries of other packages, which
    // `cargo test` builds only for packages that have integration tests.
    util::cargo(&["build", "--workspace", "--bins"])?;
    let mut args = vec!["test", "--workspace"];
    args.extend(rest.iter().map(String::as_str));
    util::cargo(&args)
}
