//! `features-bench`: timing and memory of feature extraction on the
//! generated full-size VGG16 (random weights), with the `onnxruntime`
//! Python package timed on the same conv-base file in the same run.
//!
//! ```sh
//! cargo run --release -p features --example features-bench -- [--python VENV/bin/python] [--work target/bench/features]
//! ```
//!
//! Prints a Markdown section on stdout (progress on stderr) and writes the
//! raw figures to WORK/results.json. `cargo xtask bench` runs it (see
//! `xtask/src/bench_features.rs`). Not a test: it takes a few minutes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use contracts::features::{CacheKey, Dtype};
use dataset::{Dataset, Split};
use feature_cache::{load_split, FeatureCache, SplitFeatures};
use features::{extract, ConvBase, ExtractOptions};
use imaging::preprocess;
use models::ResolvedModel;
use ndarray::Array2;
use serde_json::{json, Value};
use spec::{ModelSpec, Pooling};

/// VGG16 conv base at 224x224: 15.35 GMAC = 30.7 GFLOP per image.
const GFLOP_PER_IMAGE: f64 = 30.7;
/// Batch sizes and timed batches of each (after one warm-up run at batch 1).
const BATCHES: [(usize, usize); 3] = [(1, 4), (8, 2), (32, 2)];
/// Images in the peak-memory extraction, and their input side.
const MEMORY_IMAGES: usize = 2000;
const MEMORY_SIDE: u32 = 32;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    match args.first().map(String::as_str) {
        Some("peak-memory") => return peak_memory_child(&args[1..]),
        Some("resolve-only") => return resolve_only_child(&args[1..]),
        _ => {}
    }
    let work = PathBuf::from(flag("--work").unwrap_or_else(|| "target/bench/features".into()));
    let python = flag("--python").map(PathBuf::from);
    std::fs::create_dir_all(&work)?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let spec_path = manifest.join("../../data-specs/models/vgg16-random.toml");
    let spec = ModelSpec::from_toml(&std::fs::read_to_string(&spec_path)?)?;
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut results = json!({ "threads": threads, "cpu": cpu_name() });

    eprintln!("resolving {} (generated once, about 550 MB, in the cache) ...", spec.name);
    let t = Instant::now();
    let model = models::resolve(&spec, &runtime::cache_dir()?)?;
    results["resolve_seconds"] = json!(t.elapsed().as_secs_f64());
    eprintln!("{}", model.weights_note());

    // 1. Raw inference (ConvBase::run on preprocessed images).
    let rust = throughput(&model, threads)?;
    results["rust_images_per_s"] = json!(rust);

    // 2. The Python package on the same file, same batches and threads.
    let script = manifest.join("bench/ort_python.py");
    let python_figures = match &python {
        Some(python) => Some(python_throughput(python, &script, &model, threads)?),
        None => None,
    };
    results["python"] = python_figures.clone().unwrap_or(Value::Null);

    // 3. extract() end to end at 224x224 (producer thread, cache writes).
    let end_to_end = end_to_end(&work, &model, threads)?;
    results["extract_end_to_end"] = end_to_end.clone();

    // 4. The cache-hit path.
    let hits = cache_hits(&work)?;
    results["cache_hits"] = json!(hits);

    // 5. Peak memory of a 2,000-image extraction at 64x64 (a child process).
    let memory = peak_memory(&work, &spec)?;
    results["peak_memory"] = memory.clone();

    // 6. The segments, read back by pyarrow and DuckDB.
    let readback = match &python {
        Some(python) => Some(read_back(python, &script, &work)?),
        None => None,
    };
    results["readback"] = readback.clone().unwrap_or(Value::Null);

    // 7. Cutting: the conv base equals the full model's intermediate output.
    let (cut_diff, cut_scale) = cut_equals_full(&work, &model, threads)?;
    results["cut_check"] = json!({ "max_abs_diff": cut_diff, "max_abs_value": cut_scale });

    std::fs::write(work.join("results.json"), serde_json::to_string_pretty(&results)? + "\n")?;
    print!("{}", markdown(&results, &rust, python_figures.as_ref(), &end_to_end, &hits, &memory, readback.as_ref()));
    println!(
        "\nCutting, checked on the full generated VGG16 (classifier included): on one image, the cut conv base's \
         output and the full model's `{}` output differ by at most {cut_diff:e} (largest value {cut_scale:.3}).",
        model.spec.conv_base.output
    );
    Ok(())
}

/// Runs one image through the cut conv base and through the full model
/// with the cut tensor exposed as an extra output; returns the largest
/// difference and the largest value. Fails when they disagree.
fn cut_equals_full(work: &Path, model: &ResolvedModel, threads: usize) -> Result<(f32, f32)> {
    let mut full = onnx_graph::read_model(&model.full)?;
    onnx_graph::expose_output(&mut full, &model.spec.conv_base.output)?;
    let exposed_path = work.join("vgg16-full-exposed.onnx");
    onnx_graph::write_model(&full, &exposed_path)?;
    drop(full);
    let exposed = ResolvedModel { conv_base: exposed_path, ..model.clone() };
    let input = images(model, 1);
    let cut = ConvBase::open(model, Pooling::Flatten, threads)?.run(&input, 1)?;
    let whole = ConvBase::open(&exposed, Pooling::Flatten, threads)?.run(&input, 1)?;
    let diff = cut.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = cut.iter().map(|v| v.abs()).fold(0f32, f32::max);
    if cut.len() != whole.len() || diff > 1e-5 * scale.max(1e-6) || scale == 0.0 {
        bail!("the cut conv base differs from the full model: max |diff| {diff} at scale {scale}");
    }
    Ok((diff, scale))
}

/// A demo image, preprocessed for `model`.
fn images(model: &ResolvedModel, n: usize) -> Vec<f32> {
    let mut rng = train_kit::SplitMix64::new(5);
    let spec = &model.spec;
    let mut out = Vec::with_capacity(n * preprocess::input_len(&spec.input));
    for i in 0..n {
        let img = demo::render(i % demo::CLASSES.len(), 341, 256, &mut rng);
        out.extend(preprocess::preprocess(img.as_raw(), img.dimensions(), &spec.preprocess, &spec.input).unwrap());
    }
    out
}

fn throughput(model: &ResolvedModel, threads: usize) -> Result<Vec<(usize, f64)>> {
    let t = Instant::now();
    let mut conv_base = ConvBase::open(model, Pooling::Flatten, threads)?;
    eprintln!("session ready in {:.1} s", t.elapsed().as_secs_f64());
    let max_batch = BATCHES.iter().map(|b| b.0).max().unwrap_or(1);
    let input = images(model, max_batch);
    let per_image = preprocess::input_len(&model.spec.input);
    conv_base.run(&input[..per_image], 1)?; // warm-up
    let mut out = Vec::new();
    for (batch, reps) in BATCHES {
        let t = Instant::now();
        for _ in 0..reps {
            conv_base.run(&input[..batch * per_image], batch)?;
        }
        let rate = (batch * reps) as f64 / t.elapsed().as_secs_f64();
        eprintln!("ours: batch {batch}: {rate:.2} images/s");
        out.push((batch, rate));
    }
    Ok(out)
}

fn python_throughput(python: &Path, script: &Path, model: &ResolvedModel, threads: usize) -> Result<Value> {
    let batches: Vec<String> = BATCHES.iter().map(|b| b.0.to_string()).collect();
    let reps: Vec<String> = BATCHES.iter().map(|b| b.1.to_string()).collect();
    let [w, _] = model.spec.input.size;
    let out = Command::new(python)
        .arg(script)
        .arg("time")
        .arg(&model.conv_base)
        .args(["--input", &model.spec.input.name, "--size", &w.to_string()])
        .args(["--batches", &batches.join(","), "--reps", &reps.join(","), "--threads", &threads.to_string()])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{} failed:\n{}", script.display(), String::from_utf8_lossy(&out.stderr));
    }
    let value: Value = serde_json::from_slice(&out.stdout).context("the Python script's output")?;
    eprintln!("onnxruntime (Python): {}", value["images_per_s"]);
    Ok(value)
}

/// A demo dataset of `per_class × 5` images (about `w`x`h`), ingested at
/// `shorter_side`; made once under `dir`.
fn dataset(dir: &Path, per_class: usize, (w, h): (u32, u32), shorter_side: u32) -> Result<Dataset> {
    let data = dir.join("data");
    if !dir.join(".complete").exists() {
        let images = dir.join("images");
        let _ = std::fs::remove_dir_all(dir);
        demo::generate(&images, &demo::DemoOptions { per_class, width: w, height: h, seed: 3, broken_files: false })?;
        let mut spec = spec::DatasetSpec::for_root(images.to_string_lossy());
        spec.size = spec::StoredSize::ShorterSide(shorter_side);
        spec.split = spec::SplitRatios { train: 1.0, validation: 0.0, test: 0.0 };
        ingest::ingest(&spec, &data, &Default::default(), &progress::Silent)?;
        std::fs::write(dir.join(".complete"), b"")?;
    }
    Ok(Dataset::open(&data)?)
}

fn end_to_end(work: &Path, model: &ResolvedModel, threads: usize) -> Result<Value> {
    let dataset = dataset(&work.join("dataset-20"), 4, (341, 256), 256)?;
    let cache_dir = work.join("cache-end-to-end");
    let _ = std::fs::remove_dir_all(&cache_dir);
    let cache = FeatureCache::open(&cache_dir)?;
    let options = ExtractOptions { batch_size: 8, threads: Some(threads), ..Default::default() };
    let summary = extract(&dataset, model, &cache, &options, &progress::Silent)?;
    let rate = summary.images_per_second();
    eprintln!("extract(): {} images, batch 8: {rate:.2} images/s ({:.1} s in all)", summary.computed, summary.seconds);
    let again = extract(&dataset, model, &cache, &options, &progress::Silent)?;
    Ok(json!({
        "images": summary.computed, "batch": 8, "images_per_s": rate, "seconds": summary.seconds,
        "second_run_hits": again.hits, "second_run_seconds": again.seconds,
    }))
}

/// ReLU-like values: max(0, N(0, 1)), from a seeded generator.
fn relu_like(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut rng = train_kit::SplitMix64::new(seed);
    Array2::from_shape_fn((rows, cols), |_| {
        let (u1, u2) = (rng.range(1e-7, 1.0), rng.range(0.0, 1.0));
        let n = (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos();
        n.max(0.0)
    })
}

#[derive(serde::Serialize, Clone)]
struct HitFigure {
    what: String,
    vectors: usize,
    dim: usize,
    dtype: Dtype,
    disk_mb: f64,
    scan_ms: f64,
    read_ms: f64,
    vectors_per_s: f64,
    mb_per_s: f64,
}

fn cache_hits(work: &Path) -> Result<Vec<HitFigure>> {
    let root = work.join("cache-hits");
    let _ = std::fs::remove_dir_all(&root);
    let cache = FeatureCache::open(&root)?;
    let mut out = Vec::new();
    for (what, n, dim, dtype, per_segment) in [
        ("avg-pooled", 10_000, 512, Dtype::F32, 1000),
        ("avg-pooled", 10_000, 512, Dtype::F16, 1000),
        ("flatten", 2_000, 25_088, Dtype::F32, 100),
    ] {
        let key = CacheKey {
            model: format!("bench-{what}"),
            model_fingerprint: format!("bench-{what}-{dim}"),
            preprocess_fingerprint: "bench".into(),
            pooling: if dim == 512 { Pooling::Avg } else { Pooling::Flatten },
            dtype,
            embedding_len: dim,
        };
        let store = cache.store(&key)?;
        let ids: Vec<String> = (0..n).map(|i| spec::sha256_hex(format!("{what}-{i}").as_bytes())).collect();
        for (chunk, start) in ids.chunks(per_segment).zip((0..).step_by(per_segment)) {
            store.append(chunk, relu_like(chunk.len(), dim, start as u64 + 1).view())?;
        }
        let disk: u64 =
            std::fs::read_dir(store.dir())?.flatten().filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum();
        // Serve them in an order unrelated to the segments (as a dataset's would be).
        let mut order: Vec<&str> = ids.iter().map(String::as_str).collect();
        order.sort();
        let t = Instant::now();
        let index = store.scan()?;
        let scan = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let vectors = store.read(&index, &order)?;
        let read = t.elapsed().as_secs_f64();
        assert_eq!(vectors.dim(), (n, dim));
        let total = scan + read;
        let figure = HitFigure {
            what: what.into(),
            vectors: n,
            dim,
            dtype,
            disk_mb: disk as f64 / 1e6,
            scan_ms: scan * 1e3,
            read_ms: read * 1e3,
            vectors_per_s: n as f64 / total,
            mb_per_s: (n * dim * 4) as f64 / 1e6 / total,
        };
        eprintln!(
            "cache hits: {what} {n} x {dim} {dtype}: scan {:.0} ms + read {:.0} ms",
            figure.scan_ms, figure.read_ms
        );
        out.push(figure);
    }
    Ok(out)
}

/// VmHWM (peak resident memory) of this process, in MB.
fn vm_hwm_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(str::to_string))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn small_spec(spec: &ModelSpec) -> ModelSpec {
    let mut small = spec.clone();
    small.input.size = [MEMORY_SIDE, MEMORY_SIDE];
    small.preprocess.resize =
        spec::Resize { shorter_side: Some(MEMORY_SIDE), center_crop: Some([MEMORY_SIDE, MEMORY_SIDE]), exact: None };
    small.conv_base.shape = [512, (MEMORY_SIDE / 32) as usize, (MEMORY_SIDE / 32) as usize].into();
    small
}

fn child(args: &[&str]) -> Result<Value> {
    let out = Command::new(std::env::current_exe()?).args(args).output()?;
    if !out.status.success() {
        bail!("{args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn peak_memory(work: &Path, spec: &ModelSpec) -> Result<Value> {
    let per_class = MEMORY_IMAGES / demo::CLASSES.len();
    eprintln!("peak memory: {MEMORY_IMAGES} images at {MEMORY_SIDE}x{MEMORY_SIDE} ...");
    let dataset =
        dataset(&work.join(format!("dataset-{MEMORY_IMAGES}-{MEMORY_SIDE}")), per_class, (48, 36), MEMORY_SIDE)?;
    // Resolved here (the cut is made once), then handed to the child as JSON.
    let model = models::resolve(&small_spec(spec), &runtime::cache_dir()?)?;
    let model_json = work.join("model-small.json");
    std::fs::write(&model_json, serde_json::to_string(&model)?)?;
    let cache = work.join("cache-memory");
    let _ = std::fs::remove_dir_all(&cache);
    let s = |p: &Path| p.display().to_string();
    let extraction = child(&["peak-memory", &s(&model_json), &s(dataset.dir()), &s(&cache)])?;
    let resolve_only = child(&["resolve-only", &s(&model_json)])?;
    eprintln!("peak memory: extraction {extraction}, models::resolve alone {resolve_only}");
    Ok(json!({ "extraction": extraction, "resolve_only": resolve_only, "side": MEMORY_SIDE }))
}

/// Child: extract a dataset with a resolved model, report VmHWM.
fn peak_memory_child(args: &[String]) -> Result<()> {
    let [model_json, dataset, cache] = args else { bail!("peak-memory MODEL_JSON DATASET CACHE") };
    let model: ResolvedModel = serde_json::from_str(&std::fs::read_to_string(model_json)?)?;
    let dataset = Dataset::open(Path::new(dataset))?;
    let cache = FeatureCache::open(Path::new(cache))?;
    let before = vm_hwm_mb();
    let options = ExtractOptions { pooling: Some(Pooling::Avg), ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &options, &progress::Silent)?;
    let store = cache.store(&summary.key)?;
    let after_extract = vm_hwm_mb();
    let SplitFeatures { features, .. } = load_split(&dataset, &store, Split::Train)?;
    println!(
        "{}",
        json!({
            "images": summary.computed, "seconds": summary.seconds, "images_per_s": summary.images_per_second(),
            "vm_hwm_mb_at_start": before, "vm_hwm_mb_after_extract": after_extract,
            "vm_hwm_mb_after_load": vm_hwm_mb(), "loaded": features.nrows(),
        })
    );
    Ok(())
}

/// Child: what `models::resolve` alone costs in memory (the `features`
/// binary calls it before extracting).
fn resolve_only_child(args: &[String]) -> Result<()> {
    let [model_json] = args else { bail!("resolve-only MODEL_JSON") };
    let model: ResolvedModel = serde_json::from_str(&std::fs::read_to_string(model_json)?)?;
    let t = Instant::now();
    models::resolve(&model.spec, &runtime::cache_dir()?)?;
    println!("{}", json!({ "vm_hwm_mb": vm_hwm_mb(), "seconds": t.elapsed().as_secs_f64() }));
    Ok(())
}

fn read_back(python: &Path, script: &Path, work: &Path) -> Result<Value> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(work.join("cache-hits"))? {
        let dir = entry?.path();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .collect();
        files.sort();
        if let Some(first) = files.first() {
            segments.push(first.clone());
        }
    }
    segments.sort();
    let out = Command::new(python).arg(script).arg("read").args(&segments).output()?;
    if !out.status.success() {
        bail!("reading the segments back failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn markdown(
    results: &Value,
    rust: &[(usize, f64)],
    python: Option<&Value>,
    end_to_end: &Value,
    hits: &[HitFigure],
    memory: &Value,
    readback: Option<&Value>,
) -> String {
    let threads = results["threads"].as_u64().unwrap_or(0);
    let mut md = format!(
        "## Features\n\n`cargo xtask bench --only features` (or `cargo run --release -p features --example features-bench -- \
         --python target/bench/venv-ort/bin/python`): the generated VGG16 conv base (`data-specs/models/vgg16-random.toml`, \
         random weights), 224x224, ONNX Runtime 1.32 CPU, {threads} intra-op threads, graph optimisation \"all\"; one \
         warm-up run, then {} timed batches of 1, 8 and 32. GFLOP/s counts 30.7 GFLOP per image.\n\n\
         | batch | ours (ort crate) images/s | GFLOP/s | onnxruntime (Python) images/s | ours / Python |\n|---|---|---|---|---|\n",
        BATCHES.iter().map(|b| b.1.to_string()).collect::<Vec<_>>().join(", "),
    );
    for &(batch, rate) in rust {
        let py = python.and_then(|p| p["images_per_s"][batch.to_string()].as_f64());
        md += &format!(
            "| {batch} | {rate:.2} | {:.0} | {} | {} |\n",
            rate * GFLOP_PER_IMAGE,
            py.map(|p| format!("{p:.2}")).unwrap_or_else(|| "not run".into()),
            py.map(|p| format!("{:.2}x", rate / p)).unwrap_or_else(|| "-".into()),
        );
    }
    md += &format!(
        "\n`extract()` end to end (dataset read, resize/crop/normalise on the producer thread, inference, Parquet commit per \
         batch), {} images at batch 8: **{:.2} images/s** of inference time; rerun: {} hits in {:.2} s.\n",
        end_to_end["images"], end_to_end["images_per_s"].as_f64().unwrap_or(0.0), end_to_end["second_run_hits"],
        end_to_end["second_run_seconds"].as_f64().unwrap_or(0.0),
    );
    md += "\nCache hits (scan = list segments and read their `content_id` column; read = the vectors, in an order \
           unrelated to the segments; random ReLU-like values, zstd level 1):\n\n\
           | vectors | dim | dtype | on disk MB | scan ms | read ms | vectors/s | MB/s (as f32) |\n|---|---|---|---|---|---|---|---|\n";
    for h in hits {
        md += &format!(
            "| {} {} | {} | {} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |\n",
            h.vectors, h.what, h.dim, h.dtype, h.disk_mb, h.scan_ms, h.read_ms, h.vectors_per_s, h.mb_per_s
        );
    }
    let ex = &memory["extraction"];
    md += &format!(
        "\nPeak memory (VmHWM) of a {MEMORY_IMAGES}-image extraction at a reduced input of {MEMORY_SIDE}x{MEMORY_SIDE} \
         (avg pooling, batch 16, in a child process given the resolved model): **{:.0} MB** after extracting \
         ({:.1} images/s), {:.0} MB after loading the split back; `models::resolve` alone (what the `features` binary does \
         first, model already in the cache) peaks at {:.0} MB.\n",
        ex["vm_hwm_mb_after_extract"].as_f64().unwrap_or(f64::NAN),
        ex["images_per_s"].as_f64().unwrap_or(0.0),
        ex["vm_hwm_mb_after_load"].as_f64().unwrap_or(f64::NAN),
        memory["resolve_only"]["vm_hwm_mb"].as_f64().unwrap_or(f64::NAN),
    );
    if let Some(r) = readback {
        md += &format!(
            "\nThe first segment of each cache-hit folder, read back by pyarrow {} and DuckDB {}:\n\n\
             | segment dtype | pyarrow type | pyarrow rows | DuckDB |\n|---|---|---|---|\n",
            r["pyarrow"].as_str().unwrap_or("?"),
            r["duckdb"].as_str().unwrap_or("?")
        );
        for s in r["segments"].as_array().into_iter().flatten() {
            md += &format!(
                "| {} | `{}` | {} | {} |\n",
                s["key_dtype"].as_str().unwrap_or("?"),
                s["embedding"].as_str().unwrap_or("?"),
                s["rows"],
                s["duckdb"].as_str().unwrap_or("?")
            );
        }
    }
    md += &format!(
        "\nMachine: {}, {threads} cores (shared: other work on it skews single runs).\n",
        results["cpu"].as_str().unwrap_or("?")
    );
    md
}
