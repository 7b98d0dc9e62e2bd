//! The finetune benchmark: `finetune train` on the full-size generated VGG16
//! (block 5 + a 25,088 → 1,024 → 5 head, batch 32, one epoch) in its three
//! prefix modes, with ONNX Runtime's training API driven from Python on the
//! same artifacts (random inputs in memory) as the engine baseline, measured
//! in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::Value;

use crate::util;

const WORK: &str = "target/bench/finetune";
const MODEL: &str = "data-specs/models/vgg16-random.toml";
/// Demo images per class (5 classes; about 80 land in the train split).
const PER_CLASS: usize = 20;

struct Mode {
    name: &'static str,
    flags: &'static [&'static str],
    what: &'static str,
}

const MODES: [Mode; 3] = [
    Mode { name: "full", flags: &["--no-augment", "--prefix", "full"], what: "whole graph in the training session" },
    Mode {
        name: "cached",
        flags: &["--no-augment", "--prefix", "cached"],
        what: "block 5 + head on cached block-4 outputs",
    },
    Mode {
        name: "inference",
        flags: &["--prefix", "inference"],
        what: "augmentation on; prefix as inference every step, block 5 + head trained",
    },
];

pub fn run() -> Result<String> {
    let root = util::workspace_root();
    let work = root.join(WORK);
    let bins = util::release_bins(&["ingest", "finetune"])?;
    let dataset = dataset(&bins, &work)?;
    let venv = runtime::ensure_training_venv()?;

    let _ = std::fs::remove_dir_all(work.join("prefix-cache"));
    let mut rows = Vec::new();
    for mode in &MODES {
        let out = work.join(mode.name);
        let _ = std::fs::remove_dir_all(&out);
        let measured = crate::bench::measure(
            Command::new(bins.join("finetune"))
                .current_dir(&root)
                .args(["train", "--model", MODEL, "--allow-random-head", "--epochs", "1", "--batch-size", "32"])
                .arg("--dataset")
                .arg(&dataset)
                .arg("--out")
                .arg(&out)
                .arg("--features-cache")
                .arg(work.join("prefix-cache"))
                .args(mode.flags),
        )?;
        let summary: Value = read_json(&out.join("finetune.json"))?;
        let artifacts = PathBuf::from(summary["artifacts"].as_str().context("finetune.json names its artifacts")?);
        let item_shape = if mode.name == "full" { "3,224,224" } else { "512,14,14" };
        // The engine's inference-mode figure runs the prefix too (below).
        let train_images = summary_train_images(&out)?;
        let prefix = (mode.name == "inference").then(|| prefix_model(&work)).transpose()?;
        let engine = python_steps(&venv.python, &root, &artifacts, item_shape, train_images, prefix.as_deref())?;
        rows.push((mode, measured, summary, engine));
    }

    let keras = keras(&root)?;
    let keras_finetune = keras["finetune_block5_img_per_s"].as_f64().unwrap_or(f64::NAN);
    let mut md = String::from(
        "Command: `cargo xtask bench --only finetune`. `finetune train` (release build) on the generated VGG16 \
         (random weights, 224×224), block 5 + head (25,088 → 1,024 → 5) trainable, AdamW, batch 32, one epoch \
         over the demo dataset's train split, 2 intra-op threads. *Ours* is the Rust loop's epoch throughput: \
         data loading, preprocessing and augmentation included. *Engine* is ONNX Runtime's training API \
         (1.19.2) driven from Python on the same artifacts with random inputs already in memory, same batch \
         sizes, measured right after; for the inference mode, each batch goes through the frozen prefix in a \
         Python ONNX Runtime inference session first. Peak memory of ours covers the whole command: composing, \
         generating the artifacts in-process, the prefix pass, training, export and the test evaluation; the \
         engine's covers its training steps only.\n\n\
         | mode | what trains on what | ours, images/s | engine, images/s | ours / engine | artifacts (s) | \
         prefix pass (s) | peak memory, ours (MB) | engine (MB) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (mode, measured, summary, engine) in &rows {
        let ours = summary["train_images_per_second"].as_f64().unwrap_or(f64::NAN);
        let theirs = engine["images_per_second"].as_f64().unwrap_or(f64::NAN);
        let prefix = summary["prefix_cache"]["seconds"].as_f64().map(|s| format!("{s:.1}")).unwrap_or("–".into());
        md += &format!(
            "| {} | {} | {ours:.2} | {theirs:.2} | {:.2}× | {:.1} | {prefix} | {:.0} | {:.0} |\n",
            mode.name,
            mode.what,
            ours / theirs,
            summary["artifacts_seconds"].as_f64().unwrap_or(f64::NAN),
            measured.max_rss_mb,
            engine["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
        );
    }
    let full = rows[0].2["train_images_per_second"].as_f64().unwrap_or(f64::NAN);
    let cached = &rows[1].2;
    let cached_speed = cached["train_images_per_second"].as_f64().unwrap_or(f64::NAN);
    let inference = rows[2].2["train_images_per_second"].as_f64().unwrap_or(f64::NAN);
    md += &format!(
        "\nKeras ({}, the seed's recipe in `xtask/py/keras_seed.py`: VGG16 with block 5 and the same head \
         trainable, Adam, batch 32, 64 random images in memory, random weights) fine-tunes at **{keras_finetune:.2} \
         images/s** in this run: ours is **{:.2}×** Keras in full mode, **{:.2}×** with augmentation (prefix as \
         inference) and **{:.1}×** in cached-prefix mode.\n\
         \nCached-prefix training runs at **{:.1}×** full mode; with augmentation, prefix-as-inference runs at \
         **{:.2}×** full mode. The cached mode's one-off prefix pass computed {} activations (train and \
         validation) in {:.1} s; a later run with the same frozen prefix and images reads them from the cache \
         instead.\n",
        keras["framework"].as_str().unwrap_or("tensorflow"),
        full / keras_finetune,
        inference / keras_finetune,
        cached_speed / keras_finetune,
        cached_speed / full,
        inference / full,
        cached["prefix_cache"]["computed"],
        cached["prefix_cache"]["seconds"].as_f64().unwrap_or(f64::NAN),
    );
    md += &format!("\nMachine: {}.\n", crate::bench::machine());
    Ok(md)
}

/// The seed's Keras recipe, timed in a throwaway venv with tensorflow-cpu.
fn keras(root: &Path) -> Result<Value> {
    let python = util::throwaway_venv(&root.join("target/bench/venv-keras"), &["tensorflow-cpu==2.21.0"])?;
    let out = Command::new(python)
        .arg(root.join("xtask/py/keras_seed.py"))
        .args(["64", "5"])
        .output()
        .context("running the Keras baseline")?;
    if !out.status.success() {
        anyhow::bail!("keras_seed.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(text.trim().lines().last().unwrap_or(""))?)
}

/// Demo images ingested at shorter side 256 (made once).
fn dataset(bins: &Path, work: &Path) -> Result<PathBuf> {
    let images = work.join("images");
    let dataset = work.join("dataset");
    if !dataset.join("dataset.json").exists() {
        let _ = std::fs::remove_dir_all(&images);
        let options = demo::DemoOptions { per_class: PER_CLASS, width: 320, height: 256, seed: 1, broken_files: false };
        demo::generate(&images, &options)?;
        util::run(
            Command::new(bins.join("ingest"))
                .arg("--root")
                .arg(&images)
                .arg("--out")
                .arg(&dataset)
                .args(["--shorter-side", "256"]),
        )?;
    }
    Ok(dataset)
}

/// The train split's size: what one epoch's throughput was measured over.
fn summary_train_images(out: &Path) -> Result<u64> {
    read_json(&out.join("../dataset/dataset.json"))?["splits"]["train"]["rows"]
        .as_u64()
        .context("train rows in dataset.json")
}

/// The frozen prefix (image → block-4 output) cut from the conv base, for
/// the engine baseline of the prefix-as-inference mode.
fn prefix_model(work: &Path) -> Result<PathBuf> {
    let path = work.join("prefix.onnx");
    if !path.exists() {
        let spec = spec::ModelSpec::from_toml(&std::fs::read_to_string(MODEL)?)
            .map_err(|e| e.in_file("model spec", std::path::Path::new(MODEL)))?;
        let resolved = models::resolve(&spec, &runtime::cache_dir()?)?;
        let base = onnx_graph::read_model(&resolved.conv_base)?;
        let cut = onnx_graph::cut_at(&base, &spec.blocks["block5"].input)?;
        onnx_graph::write_model(&cut, &path)?;
    }
    Ok(path)
}

fn python_steps(
    python: &Path,
    root: &Path,
    artifacts: &Path,
    item_shape: &str,
    images: u64,
    prefix: Option<&Path>,
) -> Result<Value> {
    let mut command = Command::new(python);
    if let Some(prefix) = prefix {
        command.arg(root.join("xtask/py/ort_train_steps.py")).arg("--prefix-model").arg(prefix);
    } else {
        command.arg(root.join("xtask/py/ort_train_steps.py"));
    }
    let out = command
        .arg("--artifacts")
        .arg(artifacts)
        .args(["--item-shape", item_shape, "--classes", "5", "--batch", "32"])
        .args(["--images", &images.to_string()])
        .output()
        .context("running the Python engine baseline")?;
    if !out.status.success() {
        anyhow::bail!("ort_train_steps.py failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    let line = String::from_utf8(out.stdout)?;
    Ok(serde_json::from_str(line.trim().lines().last().unwrap_or(""))?)
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}
