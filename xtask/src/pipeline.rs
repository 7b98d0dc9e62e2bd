//! `cargo xtask pipeline`: runs each stage's binary as a batch step, with
//! files between them.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Result;

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Image folder (one sub-folder per class). Default: the built-in demo
    /// dataset, generated on first use.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the stages write their outputs.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Stored image size (shorter side).
    #[arg(long, default_value_t = 256)]
    shorter_side: u32,
}

pub fn run(args: &Args) -> Result<()> {
    let data = match &args.data {
        Some(dir) => dir.clone(),
        None => {
            let dir = PathBuf::from("runs/demo-images");
            if !dir.exists() {
                let made = demo::generate(&dir, &demo::DemoOptions::default())?;
                eprintln!("generated the demo dataset ({} classes) in {}", made.images_per_class.len(), dir.display());
            }
            dir
        }
    };
    let bins = util::release_bins(&["ingest"])?;
    let dataset = args.out.join("dataset");
    util::run(
        Command::new(bins.join("ingest"))
            .arg("--root")
            .arg(&data)
            .arg("--out")
            .arg(&dataset)
            .args(["--shorter-side", &args.shorter_side.to_string()]),
    )?;
    println!("\ndataset ready in {}", dataset.display());
    println!("next stages (feature extraction, head, fine-tuning) are not built yet; see ARCHITECTURE.md");
    Ok(())
}
