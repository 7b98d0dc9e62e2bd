//! `cargo xtask bench`: stage benchmarks with baselines measured in the same
//! run, written as sections of BENCHMARKS.md.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageFormat};

use crate::util;

#[derive(clap::Args)]
pub struct Args {
    /// Only these benchmarks (default: all). Known: ingest, features, head, finetune, scale.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Images in the ingest benchmark.
    #[arg(long, default_value_t = 2000)]
    images: usize,
    /// Skip the Python baselines (no venv needed).
    #[arg(long)]
    no_python: bool,
    /// Dataset sizes of the scale benchmark.
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10000, 50000])]
    scale_sizes: Vec<usize>,
    /// The scale benchmark also fine-tunes VGG16 (224x224) on its smallest dataset.
    #[arg(long)]
    scale_vgg16: bool,
}

const BENCH_DIR: &str = "target/bench";

pub fn run(args: &Args) -> Result<()> {
    let wanted = |name: &str| args.only.is_empty() || args.only.iter().any(|o| o == name);
    if wanted("ingest") {
        let section = ingest(args)?;
        write_section("ingest", &section)?;
    }
    if wanted("features") {
        write_section("features", &crate::bench_features::run()?)?;
    }
    if wanted("head") {
        write_section("head", &head()?)?;
    }
    if wanted("finetune") {
        write_section("finetune", &crate::bench_finetune::run()?)?;
    }
    if wanted("scale") {
        let (scale, vgg16) = crate::bench_scale::run(&args.scale_sizes, args.scale_vgg16)?;
        write_section("scale", &scale)?;
        if let Some(vgg16) = vgg16 {
            write_section("scale-vgg16", &vgg16)?;
        }
    }
    println!("updated BENCHMARKS.md");
    Ok(())
}

/// Wall time and peak memory of one command, from GNU time.
pub struct Measured {
    pub seconds: f64,
    pub max_rss_mb: f64,
    pub stdout: String,
}

pub fn measure(cmd: &mut Command) -> Result<Measured> {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        bail!("/usr/bin/time is needed for peak-memory figures (apt-get install time)");
    }
    let mut timed = Command::new(time);
    timed.arg("-v").arg(cmd.get_program()).args(cmd.get_args());
    eprintln!("$ {timed:?}");
    let out = timed.output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("{timed:?} failed:\n{stderr}");
    }
    let field = |name: &str| stderr.lines().find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()));
    let rss_kb: f64 = field("Maximum resident set size (kbytes):").context("no RSS in time -v output")?.parse()?;
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):").context("no wall time")?;
    let seconds = wall.split(':').fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap_or(0.0));
    Ok(Measured { seconds, max_rss_mb: rss_kb / 1024.0, stdout: String::from_utf8_lossy(&out.stdout).into_owned() })
}

fn ingest(args: &Args) -> Result<String> {
    let data = PathBuf::from(BENCH_DIR).join(format!("ingest-{}-640x480", args.images));
    if !data.join(".complete").exists() {
        eprintln!("generating {} 640x480 JPEGs in {} ...", args.images, data.display());
        let mut rng = train_kit::SplitMix64::new(1);
        for i in 0..args.images {
            let class = i % demo::CLASSES.len();
            let dir = data.join(demo::CLASSES[class]);
            std::fs::create_dir_all(&dir)?;
            let img = demo::render(class, 640, 480, &mut rng);
            std::fs::write(
                dir.join(format!("{i:05}.jpg")),
                demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg),
            )?;
        }
        std::fs::write(data.join(".complete"), b"")?;
    }
    let bins = util::release_bins(&["ingest"])?;
    let out = PathBuf::from(BENCH_DIR).join("ingest-out");
    let ours = measure(Command::new(bins.join("ingest")).arg("--root").arg(&data).arg("--out").arg(&out))?;
    let ours_rate = args.images as f64 / ours.seconds;
    // Memory must not grow with the number of images: a run on a quarter.
    let quarter = PathBuf::from(BENCH_DIR).join("ingest-quarter");
    if !quarter.exists() {
        for class in demo::CLASSES {
            std::fs::create_dir_all(quarter.join(class))?;
            let mut names: Vec<_> =
                std::fs::read_dir(data.join(class))?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
            names.sort();
            for src in names.iter().take(names.len() / 4) {
                std::fs::copy(src, quarter.join(class).join(src.file_name().unwrap()))?;
            }
        }
    }
    let small = measure(
        Command::new(bins.join("ingest"))
            .arg("--root")
            .arg(&quarter)
            .arg("--out")
            .arg(PathBuf::from(BENCH_DIR).join("ingest-quarter-out")),
    )?;

    let mut md = format!(
        "## Ingest\n\n`cargo xtask bench --only ingest`: {n} generated 640x480 JPEGs (5 classes), decode + EXIF orientation + \
         Lanczos3 resize to shorter side 256 + SHA-256 + Parquet (zstd), 2 threads.\n\n\
         | what | images/s | wall s | peak RSS MB |\n|---|---|---|---|\n\
         | ours, {n} images | {ours_rate:.0} | {:.1} | {:.0} |\n\
         | ours, {q} images | {:.0} | {:.1} | {:.0} |\n",
        ours.seconds,
        ours.max_rss_mb,
        (args.images / 4) as f64 / small.seconds,
        small.seconds,
        small.max_rss_mb,
        n = args.images,
        q = args.images / 4,
    );
    if !args.no_python {
        let python = bench_venv()?;
        let script = util::workspace_root().join("xtask/py/ingest_pillow.py");
        let mut pillow = Vec::new();
        for procs in [1, 2] {
            let m = measure(
                Command::new(&python)
                    .arg(&script)
                    .arg(&data)
                    .arg(PathBuf::from(BENCH_DIR).join(format!("pillow-{procs}")))
                    .args(["--procs", &procs.to_string()]),
            )?;
            let reported: serde_json::Value = serde_json::from_str(m.stdout.trim()).context("pillow script output")?;
            let rate = reported["images_per_s"].as_f64().context("images_per_s")?;
            md += &format!(
                "| Pillow + pyarrow, {procs} process(es) | {rate:.0} | {:.1} | {:.0} (largest process) |\n",
                m.seconds, m.max_rss_mb
            );
            pillow.push(rate);
        }
        md += &format!(
            "\nRatio: ours / Pillow with 2 processes = **{:.2}x** (ours / 1 process = {:.2}x), measured in the same run.\n",
            ours_rate / pillow[1],
            ours_rate / pillow[0]
        );
        let check =
            Command::new(&python).arg(util::workspace_root().join("xtask/py/read_dataset.py")).arg(&out).output()?;
        if !check.status.success() {
            bail!("pyarrow/DuckDB could not read the dataset:\n{}", String::from_utf8_lossy(&check.stderr));
        }
        md += &format!(
            "\nThe output read back by pyarrow and DuckDB: `{}`\n",
            String::from_utf8_lossy(&check.stdout).trim()
        );
    }
    md += &format!("\nMachine: {}.\n", machine());
    Ok(md)
}

/// The head's training step (25,088 → 1024 → 5, Adam) at batch 32 and 128.
fn head() -> Result<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["bench", "--quiet", "-p", "head", "--bench", "train_step"]);
    eprintln!("$ {cmd:?}");
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("head benchmark failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(format!(
        "## Head\n\n`cargo xtask bench --only head` (runs `cargo bench -p head --bench train_step`): one training step \
         of Flatten → Dense(1024, ReLU) → Dense(5) with Adam on 25,088-float embeddings.\n\n```text\n{}```\n\nMachine: {}.\n",
        String::from_utf8_lossy(&out.stdout),
        machine()
    ))
}

/// A throwaway venv with the Python baselines' packages.
fn bench_venv() -> Result<PathBuf> {
    util::throwaway_venv(&PathBuf::from(BENCH_DIR).join("venv"), &["pillow>=10", "pyarrow>=15", "duckdb>=1.0"])
}

pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cpu}, {cores} cores")
}

/// Replaces (or appends) one benchmark's section of BENCHMARKS.md, so each
/// benchmark can be rerun alone.
pub(crate) fn write_section(name: &str, body: &str) -> Result<()> {
    let path = util::workspace_root().join("BENCHMARKS.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmarks\n\nFigures from `cargo xtask bench` on this project's CI machine kind. Each section says the command that \
         produced it; baselines are measured in the same run.\n"
            .into()
    });
    let (start, end) = (format!("<!-- bench:{name} -->"), format!("<!-- /bench:{name} -->"));
    let block = format!("{start}\n{body}{end}");
    let new = match (text.find(&start), text.find(&end)) {
        (Some(a), Some(b)) => format!("{}{}{}", &text[..a], block, &text[b + end.len()..]),
        _ => format!("{}\n{}\n", text.trim_end(), block),
    };
    std::fs::write(&path, new)?;
    Ok(())
}
