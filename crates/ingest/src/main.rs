//! `ingest`: image folder or CSV manifest → Parquet dataset, as a batch step.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::Parser;
use ingest::{IngestOptions, Split};
use spec::{DatasetSource, DatasetSpec, ResizeFilter, SplitRatios, StoredSize};

/// Turn a folder of labelled images (one sub-folder per class) or a
/// `path,label` CSV manifest into a self-contained Parquet dataset.
#[derive(Parser, Debug)]
#[command(name = "ingest", version)]
struct Args {
    /// Image folder with one sub-folder per class.
    #[arg(long, conflicts_with_all = ["manifest", "spec"])]
    root: Option<PathBuf>,
    /// CSV file with a `path,label` header (paths relative to the CSV).
    #[arg(long, conflicts_with = "spec")]
    manifest: Option<PathBuf>,
    /// A dataset spec (TOML); flags below override its fields.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Output folder (replaced whole when the run succeeds).
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    name: Option<String>,
    /// Store images with this shorter side, keeping the aspect ratio.
    #[arg(long, conflicts_with = "exact")]
    shorter_side: Option<u32>,
    /// Store images at exactly WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_size)]
    exact: Option<(u32, u32)>,
    /// Split ratios TRAIN,VALIDATION,TEST (summing to 1).
    #[arg(long, value_parser = parse_ratios)]
    split: Option<SplitRatios>,
    #[arg(long)]
    seed: Option<u64>,
    /// Reject images that declare more pixels than this.
    #[arg(long)]
    max_pixels: Option<u64>,
    #[arg(long, value_enum)]
    filter: Option<FilterArg>,
    /// Also read hidden files and folders.
    #[arg(long)]
    include_hidden: bool,
    /// Exit with an error if any file was rejected or conflicted.
    #[arg(long)]
    strict: bool,
    /// Worker threads (default: all cores). The output does not depend on it.
    #[arg(long)]
    threads: Option<usize>,
    /// Rows per Parquet shard file.
    #[arg(long, default_value_t = IngestOptions::default().rows_per_shard)]
    rows_per_shard: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum FilterArg {
    Lanczos3,
    CatmullRom,
    Bilinear,
    Area,
}

fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s.split_once(['x', 'X']).ok_or("expected WIDTHxHEIGHT, e.g. 224x224")?;
    Ok((w.parse().map_err(|e| format!("width: {e}"))?, h.parse().map_err(|e| format!("height: {e}"))?))
}

fn parse_ratios(s: &str) -> Result<SplitRatios, String> {
    let parts: Vec<f64> =
        s.split(',').map(|p| p.trim().parse::<f64>().map_err(|e| format!("{p}: {e}"))).collect::<Result<_, _>>()?;
    match parts[..] {
        [train, validation, test] => Ok(SplitRatios { train, validation, test }),
        _ => Err("expected three ratios TRAIN,VALIDATION,TEST".into()),
    }
}

fn build_spec(args: &Args) -> Result<DatasetSpec> {
    // Paths are recorded as text: a non-UTF-8 one is refused, not changed.
    let utf8 = |path: &PathBuf, flag: &str| -> Result<String> {
        match path.to_str() {
            Some(text) => Ok(text.to_owned()),
            None => bail!("{flag} {}: the path is not valid UTF-8; rename it or link to it", path.display()),
        }
    };
    let mut spec = match (&args.spec, &args.root, &args.manifest) {
        // Paths in a spec are relative to the spec file.
        (Some(path), _, _) => ingest::source::read_spec(path)?,
        (None, Some(root), _) => DatasetSpec::for_root(utf8(root, "--root")?),
        (None, None, Some(manifest)) => {
            let mut spec = DatasetSpec::for_root("");
            spec.source = DatasetSource::Manifest(utf8(manifest, "--manifest")?);
            spec
        }
        (None, None, None) => bail!("give --root DIR, --manifest CSV or --spec FILE.toml"),
    };
    if let Some(name) = &args.name {
        spec.name = name.clone();
    }
    if let Some(side) = args.shorter_side {
        spec.size = StoredSize::ShorterSide(side);
    }
    if let Some((w, h)) = args.exact {
        spec.size = StoredSize::Exact([w, h]);
    }
    if let Some(split) = args.split {
        spec.split = split;
    }
    if let Some(seed) = args.seed {
        spec.seed = seed;
    }
    if let Some(max) = args.max_pixels {
        spec.max_pixels = max;
    }
    if let Some(filter) = args.filter {
        spec.filter = match filter {
            FilterArg::Lanczos3 => ResizeFilter::Lanczos3,
            FilterArg::CatmullRom => ResizeFilter::CatmullRom,
            FilterArg::Bilinear => ResizeFilter::Bilinear,
            FilterArg::Area => ResizeFilter::Area,
        };
    }
    spec.include_hidden |= args.include_hidden;
    spec.validate()?;
    Ok(spec)
}

fn run(args: Args) -> Result<ExitCode> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    let spec = build_spec(&args)?;
    let opts = IngestOptions { rows_per_shard: args.rows_per_shard, ..Default::default() };
    let started = std::time::Instant::now();
    let summary = ingest::ingest(&spec, &args.out, &opts, &progress::Terminal::new())?;
    let secs = started.elapsed().as_secs_f64();
    let info = &summary.info;

    for r in &summary.rejects {
        eprintln!("{:>14}  {}: {}", format!("{:?}", r.kind), r.path, r.reason);
    }
    for w in &info.warnings {
        eprintln!("warning: {w}");
    }
    let rows = info.total_rows();
    let per_split: Vec<String> = Split::ALL.iter().map(|&s| format!("{} {}", s, info.split(s).rows)).collect();
    println!(
        "ingested {rows} images in {} classes ({}) in {secs:.1} s ({:.0} images/s)",
        info.classes.len(),
        per_split.join(", "),
        rows as f64 / secs.max(1e-9)
    );
    print_class_counts(info);
    println!(
        "rejected {}, duplicates {}, label conflicts {}, ignored {} (see {})",
        info.rejected,
        info.duplicates,
        info.conflicts,
        info.ignored,
        summary.out_dir.join(contracts::dataset::REJECTS_FILE).display()
    );
    println!("dataset: {}", summary.out_dir.display());
    if args.strict && summary.losses() > 0 {
        eprintln!("error: --strict: {} file(s) were rejected or conflicted", summary.losses());
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Images per class and split, one line a class (up to 50 classes; all of
/// them are in dataset.json).
fn print_class_counts(info: &contracts::dataset::DatasetInfo) {
    const SHOWN: usize = 50;
    for (ci, class) in info.classes.iter().enumerate().take(SHOWN) {
        let counts: Vec<String> = Split::ALL
            .iter()
            .map(|&s| format!("{s} {}", info.split(s).per_class.get(ci).copied().unwrap_or(0)))
            .collect();
        println!("  class {class}: {}", counts.join(", "));
    }
    if info.classes.len() > SHOWN {
        println!("  … {} more classes (per-class counts in dataset.json)", info.classes.len() - SHOWN);
    }
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(code) => {
            progress::report_peak();
            code
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
