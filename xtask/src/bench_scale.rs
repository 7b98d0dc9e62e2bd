//! The scale benchmark (`cargo xtask bench --only scale`): generated
//! datasets of N images run through every stage binary (ingest → features →
//! head train → finetune train) on the tiny model, recording each stage's
//! wall time, images/s and peak resident memory, the figure that matters
//! being whether a stage's peak at the largest N stays within 15% of its
//! peak at the smallest.
//!
//! Peak memory is the line each stage binary prints as it ends
//! (`progress::report_peak`, its own VmHWM): a parent's `wait4` figure would
//! start from the parent's size at fork.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, ImageFormat};
use rayon::prelude::*;

use crate::util;

/// Where each N's images, dataset, caches and outputs live while it runs
/// (removed after each N: the disk is small).
const WORK: &str = "target/bench/scale";
const TINY: &str = "data-specs/models/tiny-vgg.toml";
const VGG16: &str = "data-specs/models/vgg16-random.toml";
/// Images are stored at this shorter side: the reduced input that lets 50k
/// images through every stage in minutes (the tiny model reads 32×32).
const STORED_SHORTER_SIDE: u32 = 64;
/// Generated JPEG sizes (width, height), cycled so every class gets each.
const SIZES: [(u32, u32); 4] = [(96, 64), (80, 80), (128, 96), (72, 108)];
/// A stage's peak at the largest N may exceed its peak at the smallest by this share.
const RSS_TOLERANCE: f64 = 0.15;
const STAGES: [&str; 5] = ["ingest", "features", "head train", "head train --memory-budget-mb 0", "finetune train"];

/// One stage run at one N.
struct StageRun {
    seconds: f64,
    peak_kib: u64,
}

/// The figures for one dataset size, in the order of [`STAGES`].
struct SizeRun {
    images: usize,
    generate_seconds: f64,
    stages: Vec<StageRun>,
}

/// Runs every size in `sizes` and returns the Markdown section; with
/// `vgg16`, also fine-tunes the generated VGG16 (224×224) on the smallest
/// size's dataset and returns that section too.
pub fn run(sizes: &[usize], vgg16: bool) -> Result<(String, Option<String>)> {
    if sizes.is_empty() || sizes.contains(&0) {
        bail!("--scale-sizes needs positive image counts, got {sizes:?}");
    }
    let root = util::workspace_root();
    let bins = util::release_bins(&["ingest", "features", "head-cli", "finetune"])?;
    let work = root.join(WORK);
    let smallest = sizes.iter().copied().min().unwrap_or(sizes[0]);
    let mut runs = Vec::new();
    let mut vgg16_run = None;
    for &n in sizes {
        let dir = work.join(format!("n-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let run = one_size(&root, &bins, &dir, n)?;
        print_size(&run);
        if vgg16 && n == smallest && vgg16_run.is_none() {
            // A failure here is reported in its section, not fatal for the table.
            vgg16_run = Some((n, finetune_vgg16(&root, &bins, &dir)));
        }
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        runs.push(run);
    }
    let vgg16_section = vgg16_run.map(|(n, stage)| vgg16_markdown(n, &stage));
    Ok((markdown(&runs), vgg16_section))
}

fn one_size(root: &Path, bins: &Path, dir: &Path, n: usize) -> Result<SizeRun> {
    let images = dir.join("images");
    let started = Instant::now();
    generate(&images, n)?;
    let generate_seconds = started.elapsed().as_secs_f64();
    eprintln!("generated {n} JPEGs in {generate_seconds:.1} s");

    let dataset = dir.join("dataset");
    let cache = dir.join("feature-cache");
    let (features, head, finetune) = (dir.join("features"), dir.join("head"), dir.join("finetune"));
    let mut stages = Vec::new();
    stages.push(stage(
        Command::new(bins.join("ingest"))
            .arg("--root")
            .arg(&images)
            .arg("--out")
            .arg(&dataset)
            .args(["--shorter-side", &STORED_SHORTER_SIDE.to_string()]),
    )?);
    // The images are in the dataset now; the disk is small.
    std::fs::remove_dir_all(&images).with_context(|| format!("removing {}", images.display()))?;
    stages.push(stage(
        Command::new(bins.join("features"))
            .current_dir(root)
            .arg("--dataset")
            .arg(&dataset)
            .args(["--model", TINY])
            .arg("--cache")
            .arg(&cache)
            .arg("--out")
            .arg(&features),
    )?);
    stages.push(stage(
        Command::new(bins.join("head")).arg("train").arg("--features").arg(&features).arg("--out").arg(&head),
    )?);
    // The head streams past its memory budget: the same training with every split streamed.
    stages.push(stage(
        Command::new(bins.join("head"))
            .args(["train", "--memory-budget-mb", "0"])
            .arg("--features")
            .arg(&features)
            .arg("--out")
            .arg(dir.join("head-streamed")),
    )?);
    stages.push(stage(
        Command::new(bins.join("finetune"))
            .current_dir(root)
            .arg("train")
            .arg("--dataset")
            .arg(&dataset)
            .arg("--head")
            .arg(&head)
            .args(["--model", TINY, "--epochs", "1"])
            .arg("--features-cache")
            .arg(&cache)
            .arg("--out")
            .arg(&finetune),
    )?);
    Ok(SizeRun { images: n, generate_seconds, stages })
}

/// `n` photo-like JPEGs of the demo's five classes in several sizes, one
/// sub-folder per class, written in parallel; image `i` depends only on `i`.
fn generate(folder: &Path, n: usize) -> Result<()> {
    for class in demo::CLASSES {
        let dir = folder.join(class);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    (0..n).into_par_iter().try_for_each(|i| {
        let class = i % demo::CLASSES.len();
        let (w, h) = SIZES[(i / demo::CLASSES.len()) % SIZES.len()];
        let mut rng = train_kit::SplitMix64::new(0x5ca1e ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let img = demo::render(class, w, h, &mut rng);
        let path = folder.join(demo::CLASSES[class]).join(format!("{i:06}.jpg"));
        std::fs::write(&path, demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Jpeg))
            .with_context(|| format!("writing {}", path.display()))
    })
}

/// Runs one stage binary to the end: its wall time and the peak it printed.
fn stage(cmd: &mut Command) -> Result<StageRun> {
    let line = format!("{cmd:?}").replace('"', "");
    eprintln!("$ {line}");
    let started = Instant::now();
    let out = cmd.output().with_context(|| format!("starting {line}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(20).collect();
        bail!("{line} failed with {}:\n{}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    let peak_kib = progress::parse_peak(&stderr).with_context(|| format!("{line} printed no peak memory line"))?;
    Ok(StageRun { seconds, peak_kib })
}

/// VGG16 (random weights, 224×224) fine-tuned for one epoch on `dir`'s
/// dataset from a seeded random head: its peak memory is what matters.
fn finetune_vgg16(root: &Path, bins: &Path, dir: &Path) -> Result<(StageRun, Option<f64>)> {
    let out = dir.join("finetune-vgg16");
    let run = stage(
        Command::new(bins.join("finetune"))
            .current_dir(root)
            .arg("train")
            .arg("--dataset")
            .arg(dir.join("dataset"))
            .args(["--model", VGG16, "--allow-random-head", "--epochs", "1", "--batch-size", "32"])
            .arg("--features-cache")
            .arg(dir.join("feature-cache"))
            .arg("--out")
            .arg(&out),
    )?;
    let summary = std::fs::read(out.join("finetune.json")).context("reading the VGG16 run's finetune.json")?;
    let summary: serde_json::Value =
        serde_json::from_slice(&summary).context("parsing the VGG16 run's finetune.json")?;
    let train_rate = summary["train_images_per_second"].as_f64();
    eprintln!("finetune VGG16: {:.1} s, peak {} MiB", run.seconds, run.peak_kib >> 10);
    Ok((run, train_rate))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn print_size(run: &SizeRun) {
    for (name, s) in STAGES.iter().zip(&run.stages) {
        eprintln!("N={} {name}: {:.1} s, peak {:.1} MiB", run.images, s.seconds, mib(s.peak_kib));
    }
}

fn markdown(runs: &[SizeRun]) -> String {
    let sizes: Vec<String> = runs.iter().map(|r| r.images.to_string()).collect();
    let (first, last) = (runs.first(), runs.last());
    let mut md = format!(
        "## Scale\n\n`cargo xtask bench --only scale --scale-sizes {}`: generated photo-like JPEGs (the demo's five \
         classes; {}; generation not counted), each N through every stage binary (release build) in a fresh \
         folder with a fresh feature cache: `ingest --shorter-side {STORED_SHORTER_SIDE}` (the reduced input), \
         `features` and `finetune train --epochs 1` (no step cap exists; one epoch: train split, validation and the \
         test pass) on the tiny model (`{TINY}`, 32×32 input, random weights), `head train` with its defaults \
         (10 epochs, hidden 1024, memory budget 4096 MB, so these splits are loaded) and again with \
         `--memory-budget-mb 0` (every split streamed from the feature cache). Images/s is N over the stage's wall time (process start \
         to exit). Peak memory is each stage process's own VmHWM, the `peak resident memory` line it prints; growth is \
         (peak at the largest N − peak at the smallest) per 1,000 extra images.\n\n\
         | stage | {} | peak ratio {} / {} | within {:.0}% | growth, KiB per 1,000 images |\n|---|{}---|---|---|\n",
        sizes.join(","),
        SIZES.iter().map(|(w, h)| format!("{w}×{h}")).collect::<Vec<_>>().join(", "),
        runs.iter().map(|r| format!("N = {}: s · images/s · peak MiB", r.images)).collect::<Vec<_>>().join(" | "),
        last.map_or(0, |r| r.images),
        first.map_or(0, |r| r.images),
        RSS_TOLERANCE * 100.0,
        "---|".repeat(runs.len()),
    );
    for (i, name) in STAGES.iter().enumerate() {
        let cells: Vec<String> = runs
            .iter()
            .map(|r| {
                let s = &r.stages[i];
                format!("{:.1} · {:.0} · {:.1}", s.seconds, r.images as f64 / s.seconds, mib(s.peak_kib))
            })
            .collect();
        let (small, large) = match (first, last) {
            (Some(a), Some(b)) => (a.stages[i].peak_kib as f64, b.stages[i].peak_kib as f64),
            _ => (f64::NAN, f64::NAN),
        };
        let ratio = large / small;
        let verdict = if ratio <= 1.0 + RSS_TOLERANCE { "pass" } else { "**fail**" };
        let added = match (first, last) {
            (Some(a), Some(b)) if b.images > a.images => (large - small) * 1000.0 / (b.images - a.images) as f64,
            _ => f64::NAN,
        };
        md += &format!("| `{name}` | {} | {ratio:.3} | {verdict} | {added:.0} |\n", cells.join(" | "));
    }
    md += &format!(
        "\nGenerating the JPEGs (rayon, not a stage figure) took {} s.\n\nNo plot: the report crate's plotting \
         functions are private to it (`pub(crate)`), so xtask cannot reuse them; the table above is the figure.\n\
         \nMachine: {}.\n",
        runs.iter().map(|r| format!("{:.1} (N = {})", r.generate_seconds, r.images)).collect::<Vec<_>>().join(", "),
        crate::bench::machine()
    );
    md
}

fn vgg16_markdown(n: usize, run: &Result<(StageRun, Option<f64>)>) -> String {
    let command = format!(
        "`cargo xtask bench --only scale --scale-vgg16`: `finetune train --model {VGG16} --allow-random-head \
         --epochs 1 --batch-size 32` (generated VGG16, random weights, 224×224 input; default settings otherwise: \
         augmentation on, so the frozen prefix runs as inference, block 5 + head train) on the scale benchmark's \
         N = {n} dataset (stored at shorter side {STORED_SHORTER_SIDE}, enlarged to the network's input by \
         preprocessing)"
    );
    let result = match run {
        Ok((run, train_rate)) => format!(
            "{:.1} s in all (training at {} images/s, from `finetune.json`), peak resident memory **{:.0} MiB** ({}).",
            run.seconds,
            train_rate.map_or("–".into(), |r| format!("{r:.2}")),
            mib(run.peak_kib),
            if run.peak_kib as f64 * 1024.0 < 3e9 { "under the 3 GB bound" } else { "**over the 3 GB bound**" },
        ),
        Err(e) => format!("it failed: {e:#}."),
    };
    format!("### Scale: fine-tuning VGG16\n\n{command}: {result}\n\nMachine: {}.\n", crate::bench::machine())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(images: usize, peaks_kib: [u64; 5]) -> SizeRun {
        let stages = peaks_kib.iter().map(|&peak_kib| StageRun { seconds: 2.0, peak_kib }).collect();
        SizeRun { images, generate_seconds: 0.0, stages }
    }

    #[test]
    fn the_table_judges_each_stage_by_its_largest_over_smallest_peak() {
        let md = markdown(&[
            size(1000, [10240, 10240, 10240, 10240, 10240]),
            size(5000, [11776, 11777, 10240, 20480, 5120]),
        ]);
        let row = |stage: &str| md.lines().find(|l| l.starts_with(&format!("| `{stage}` |"))).unwrap().to_string();
        // 11,776 / 10,240 is exactly 1.15: still within; one KiB more is not.
        assert!(row("ingest").ends_with("| 1.150 | pass | 384 |"), "{}", row("ingest"));
        assert!(row("features").contains("| **fail** |"), "{}", row("features"));
        assert!(row("head train").ends_with("| 1.000 | pass | 0 |"), "{}", row("head train"));
        assert!(row("head train --memory-budget-mb 0").contains("| 2.000 | **fail** | 2560 |"));
        // Less memory at the larger size passes, with negative growth.
        assert!(row("finetune train").ends_with("| 0.500 | pass | -1280 |"), "{}", row("finetune train"));
        // Seconds, images/s and MiB per cell.
        assert!(row("ingest").contains("| 2.0 · 500 · 10.0 | 2.0 · 2500 · 11.5 |"), "{}", row("ingest"));
    }
}
