//! Hostile vectors and shared caches: NaN or f16-overflowing vectors are
//! rejected by image and never stored; a features output verifies until a
//! segment goes missing, and a rerun computes exactly what is missing; two
//! `features` processes on one cache both succeed with the same vectors;
//! compaction waits for no one and deletes nothing another store has open.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use contracts::features::{Dtype, FeaturesInfo, FEATURES_FILE};
use dataset::{Dataset, Split};
use feature_cache::{load_split, stream_split, verify, CacheError, FeatureCache};
use features::{extract, ExtractOptions, ExtractSummary};
use onnx_graph::builder::{int_attribute, ints_attribute, GraphBuilder};
use onnx_graph::shape::Dim;
use spec::Pooling;

const TINY_SPEC: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml");

/// How the test model turns an image's mean input value `s` into its 4 outputs.
#[derive(Clone, Copy)]
enum Trap {
    /// `sqrt(s - t)`: NaN for images darker than `t`.
    SqrtBelow(f32),
    /// `relu(s - t) * 1e9`: over f16's range for images brighter than `t`, else 0.
    HugeAbove(f32),
}

/// A 32x32 "conv base" whose `[N, 4, 1, 1]` output depends on each image's
/// mean input value, so a test decides which images give bad vectors.
fn write_trap_model(path: &Path, trap: Trap) -> String {
    let mut g = GraphBuilder::new("trap");
    let data = g.input("data", &[Dim::named("N"), Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);
    let mean = g.node(
        "ReduceMean",
        "/trap/ReduceMean",
        &[&data],
        vec![ints_attribute("axes", &[1, 2, 3]), int_attribute("keepdims", 1)],
    );
    let ones = g.initializer("ones", &[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
    let out = match trap {
        Trap::SqrtBelow(t) => {
            let t = g.initializer("t", &[1], &[t]);
            let diff = g.node("Sub", "/trap/Sub", &[&mean, &t], vec![]);
            let root = g.node("Sqrt", "/trap/Sqrt", &[&diff], vec![]);
            g.node("Mul", "/trap/Mul", &[&root, &ones], vec![])
        }
        Trap::HugeAbove(t) => {
            let t = g.initializer("t", &[1], &[t]);
            let big = g.initializer("big", &[1], &[1e9]);
            let diff = g.node("Sub", "/trap/Sub", &[&mean, &t], vec![]);
            let relu = g.node("Relu", "/trap/Relu", &[&diff], vec![]);
            let scaled = g.node("Mul", "/trap/Scale", &[&relu, &big], vec![]);
            g.node("Mul", "/trap/Mul", &[&scaled, &ones], vec![])
        }
    };
    g.output(&out, &[Dim::named("N"), Dim::Fixed(4), Dim::Fixed(1), Dim::Fixed(1)]);
    onnx_graph::write_model(&g.finish("test", &[]), path).unwrap();
    out
}

fn trap_model(dir: &Path, trap: Trap, name: &str) -> models::ResolvedModel {
    let file = dir.join(format!("{name}.onnx"));
    let output = write_trap_model(&file, trap);
    let mut spec = tiny_spec();
    spec.name = name.into();
    spec.source = spec::ModelSource::Path { path: file.to_string_lossy().into_owned(), sha256: None };
    spec.conv_base.output = output;
    spec.conv_base.shape = [4, 1, 1].into();
    spec.conv_base.pooling = Pooling::Flatten;
    spec.blocks.clear();
    spec.validate().unwrap();
    resolve(&spec, &dir.join("models"))
}

/// Every image's mean preprocessed input value, sorted ascending, with its id.
fn image_means(dataset: &Dataset) -> Vec<(f64, String)> {
    let spec = tiny_spec();
    let mut means = Vec::new();
    for split in splits_with_rows(dataset) {
        for batch in dataset.batches(split, 64, true) {
            for record in batch.unwrap() {
                let size = (record.stored_width, record.stored_height);
                let pixels =
                    imaging::preprocess::preprocess(&record.pixels, size, &spec.preprocess, &spec.input).unwrap();
                let mean = pixels.iter().map(|&v| v as f64).sum::<f64>() / pixels.len() as f64;
                means.push((mean, record.content_id));
            }
        }
    }
    means.sort_by(|a, b| a.0.total_cmp(&b.0));
    means
}

/// A threshold between the `k`-th and `k+1`-th darkest images (the widest
/// gap among the first few, so float rounding cannot move an image across).
fn threshold(means: &[(f64, String)]) -> (f32, usize) {
    let k = (1..means.len().min(6))
        .max_by(|&a, &b| (means[a].0 - means[a - 1].0).total_cmp(&(means[b].0 - means[b - 1].0)));
    let k = k.unwrap();
    assert!(means[k].0 - means[k - 1].0 > 1e-4, "images too alike for this test: {means:?}");
    (((means[k].0 + means[k - 1].0) / 2.0) as f32, k)
}

fn write_features_json(
    dir: &Path,
    dataset: &Dataset,
    model: &models::ResolvedModel,
    cache: &FeatureCache,
    summary: &ExtractSummary,
) -> PathBuf {
    let out = dir.join("out");
    let info = features::features_info(dataset, model, cache.root(), summary);
    contracts::write(&out.join(FEATURES_FILE), &info).unwrap();
    out
}

fn all_ids(dataset: &Dataset) -> BTreeSet<String> {
    splits_with_rows(dataset)
        .into_iter()
        .flat_map(|s| dataset.index(s).unwrap().into_iter().map(|r| r.content_id))
        .collect()
}

#[test]
fn nan_vectors_reject_their_images_by_name_and_readers_leave_them_out() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 41);
    let means = image_means(&dataset);
    let (t, dark) = threshold(&means);
    let expected: BTreeSet<String> = means[..dark].iter().map(|(_, id)| id.clone()).collect();
    let model = trap_model(dir.path(), Trap::SqrtBelow(t), "trap-nan");
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let options = ExtractOptions { batch_size: 3, threads: Some(1), ..Default::default() };

    let first = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    let rejected: BTreeSet<String> = first.rejected.iter().map(|r| r.content_id.clone()).collect();
    assert_eq!(rejected, expected, "exactly the images darker than the threshold");
    let total = all_ids(&dataset).len();
    assert_eq!(first.computed, total - dark);
    let paths: std::collections::HashMap<String, String> = splits_with_rows(&dataset)
        .into_iter()
        .flat_map(|s| dataset.index(s).unwrap().into_iter().map(|r| (r.content_id, r.path)))
        .collect();
    for r in &first.rejected {
        assert!(r.reason.contains("not a finite number") && r.reason.contains("NaN"), "{}", r.reason);
        assert_eq!(r.path, paths[&r.content_id], "the image is named by its path");
    }
    // Nothing non-finite reached a segment; the readers leave the rejected rows out.
    let store = cache.store(&first.key).unwrap();
    let mut seen = 0;
    for split in splits_with_rows(&dataset) {
        let loaded = load_split(&dataset, &store, split).unwrap();
        assert!(loaded.features.iter().all(|v| v.is_finite()));
        assert!(loaded.ids.iter().all(|id| !expected.contains(id)), "a rejected image reached the {split} split");
        assert_eq!(loaded.ids.len(), loaded.labels.len());
        let streamed: usize = stream_split(&dataset, &store, split, 2).unwrap().map(|b| b.unwrap().ids.len()).sum();
        assert_eq!(streamed, loaded.ids.len());
        seen += loaded.ids.len();
    }
    assert_eq!(seen, dataset.info().total_rows() - dark);

    // features.json names them; a second run neither recomputes nor forgets them.
    let out = write_features_json(dir.path(), &dataset, &model, &cache, &first);
    let info: FeaturesInfo = contracts::read(&out.join(FEATURES_FILE)).unwrap();
    assert_eq!(info.rejected, first.rejected);
    verify(&out).unwrap();
    drop(store);
    let second = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    assert_eq!((second.hits, second.computed), (total - dark, 0));
    assert_eq!(second.rejected, first.rejected, "sorted by content id, the same both times");
}

#[test]
fn f16_storage_refuses_values_beyond_its_range_and_f32_keeps_them() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 42);
    let means = image_means(&dataset);
    let (t, dark) = threshold(&means);
    let model = trap_model(dir.path(), Trap::HugeAbove(t), "trap-huge");
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let total = means.len();

    let f16 = ExtractOptions { dtype: Dtype::F16, threads: Some(1), ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &f16, &progress::Silent).unwrap();
    let bright: BTreeSet<String> = means[dark..].iter().map(|(_, id)| id.clone()).collect();
    let rejected: BTreeSet<String> = summary.rejected.iter().map(|r| r.content_id.clone()).collect();
    assert_eq!(rejected, bright, "every image above the threshold overflows f16");
    assert_eq!(summary.computed, dark);
    let reason = &summary.rejected[0].reason;
    assert!(reason.contains("65504") && reason.contains("dtype = \"f32\""), "{reason}");
    let store = cache.store(&summary.key).unwrap();
    for split in splits_with_rows(&dataset) {
        let loaded = load_split(&dataset, &store, split).unwrap();
        assert!(loaded.features.iter().all(|v| v.is_finite() && *v == 0.0), "no infinity was stored");
    }

    let f32 = ExtractOptions { dtype: Dtype::F32, threads: Some(1), ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &f32, &progress::Silent).unwrap();
    assert!(summary.rejected.is_empty());
    assert_eq!(summary.computed, total);

    // The store itself refuses such a vector, whoever appends it.
    let vectors = ndarray::Array2::from_elem((1, 4), 1e6f32);
    let err = store.append(&["x".to_string()], vectors.view()).unwrap_err().to_string();
    assert!(err.contains("image x") && err.contains("f16"), "{err}");
    let nan = ndarray::Array2::from_elem((1, 4), f32::NAN);
    let f32_store = cache.store(&summary.key).unwrap();
    let err = f32_store.append(&["y".to_string()], nan.view()).unwrap_err().to_string();
    assert!(err.contains("image y") && err.contains("NaN"), "{err}");
}

#[test]
fn verify_passes_until_a_segment_goes_and_a_rerun_computes_exactly_its_rows() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 43);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let options = ExtractOptions { batch_size: 64, ..Default::default() };
    let rows = dataset.info().total_rows();
    // Two segments: the train split, then the rest.
    let train_only = ExtractOptions { splits: Some(vec![Split::Train]), ..options.clone() };
    extract(&dataset, &model, &cache, &train_only, &progress::Silent).unwrap();
    let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    let out = write_features_json(dir.path(), &dataset, &model, &cache, &summary);
    verify(&out).unwrap();
    let store_dir = summary.store.clone();
    let segments = segments(&store_dir);
    assert_eq!(segments.len(), 2, "{segments:?}");

    // The second segment deleted: verify names the store and what is missing.
    std::fs::remove_file(&segments[1]).unwrap();
    let other = rows - dataset.rows(Split::Train);
    match verify(&out) {
        Err(CacheError::Missing { store, missing, wanted, .. }) => {
            assert_eq!((store, missing, wanted), (store_dir.clone(), other, rows));
        }
        other => panic!("a deleted segment went unnoticed: {other:?}"),
    }
    let again = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    assert_eq!((again.hits, again.computed), (dataset.rows(Split::Train), other), "exactly the missing vectors");
    verify(&out).unwrap();

    // A damaged segment is moved aside by the check and is missing too.
    let first = &segments[0];
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::File::options().write(true).open(first).unwrap().set_len(len / 2).unwrap();
    let err = verify(&out).unwrap_err().to_string();
    assert!(err.contains("are not cached") && err.contains("truncated or corrupt"), "{err}");

    // The cache folder gone, or features.json unreadable: errors naming the file.
    std::fs::remove_dir_all(&store_dir).unwrap();
    let err = verify(&out).unwrap_err().to_string();
    assert!(err.contains(&store_dir.display().to_string()) && err.contains("gone"), "{err}");
    std::fs::write(out.join(FEATURES_FILE), b"{ not json").unwrap();
    let err = verify(&out).unwrap_err().to_string();
    assert!(err.contains(FEATURES_FILE), "{err}");
}

#[test]
fn compaction_skips_while_another_store_is_open_and_runs_alone() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 44);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let key = feature_cache::cache_key(dataset.info(), &model.spec, &model.fingerprint, Pooling::Flatten, Dtype::F32);
    let reader = cache.store(&key).unwrap();
    let options = ExtractOptions { batch_size: 1, ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    let rows = dataset.info().total_rows();
    assert_eq!(reader.scan().unwrap().segments(), rows, "one segment per image: compaction waited for the reader");
    let index = reader.scan().unwrap();
    // The reader's index stays good while it is open.
    assert_eq!(cache.store(&key).unwrap().compact().unwrap(), None, "skipped: the reader holds the folder");
    let ids: Vec<String> = all_ids(&dataset).into_iter().collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let before = reader.read(&index, &refs).unwrap();
    drop(reader);
    // The next extraction, with nothing to compute, catches up on the skipped compaction.
    let again = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    assert_eq!((again.hits, again.computed), (rows, 0));
    assert!(again.warnings.is_empty(), "{:?}", again.warnings);
    let store = cache.store(&summary.key).unwrap();
    let index = store.scan().unwrap();
    assert_eq!(index.segments(), 1);
    assert_eq!(store.read(&index, &refs).unwrap(), before);
    // A dead process's partial segment goes with the next compaction.
    let stale = store.dir().join(".seg-00000000000000000001-999999999-000000.parquet.999999999.partial");
    std::fs::write(&stale, b"half").unwrap();
    assert_eq!(store.compact().unwrap(), Some(0));
    assert!(!stale.exists());
}

/// The vectors of every split with rows, from a lone extraction into its
/// own cache at `cache`: what runs that raced or were killed must give.
fn lone_run_vectors(
    cache: &Path,
    dataset: &Dataset,
    model: &models::ResolvedModel,
) -> Vec<feature_cache::SplitFeatures> {
    let cache = FeatureCache::open(cache).unwrap();
    let summary = extract(dataset, model, &cache, &ExtractOptions::default(), &progress::Silent).unwrap();
    load_splits(dataset, &cache.store(&summary.key).unwrap())
}

/// The vectors a features output names, read through its `features.json`.
fn output_vectors(features_dir: &Path) -> Vec<feature_cache::SplitFeatures> {
    let info = feature_cache::read_features(features_dir).unwrap();
    let (dataset, store) = feature_cache::open_features(&info).unwrap();
    load_splits(&dataset, &store)
}

/// The binary, with its model cache in `dir/models`.
fn features_binary(dir: &Path) -> Command {
    let library = runtime::ort_library().unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_features"));
    cmd.env(runtime::TL_CACHE_DIR, dir.join("models")).env(runtime::ORT_DYLIB_PATH, library);
    cmd
}

#[test]
fn two_processes_on_one_cache_both_succeed_with_the_same_vectors() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 5, 45);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let expected = lone_run_vectors(&dir.path().join("reference"), &dataset, &model);

    for round in 0..3 {
        let cache = dir.path().join(format!("cache-{round}"));
        // One-image batches: many small segments, so each process compacts
        // while the other may be appending or reading.
        let spawn = |out: &str| {
            let mut cmd = features_binary(dir.path());
            cmd.arg("--dataset").arg(dataset.dir()).arg("--model").arg(TINY_SPEC).arg("--cache").arg(&cache);
            cmd.args(["--batch", "1", "--threads", "1", "--out"]).arg(dir.path().join(out));
            cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap()
        };
        let (a, b) = (spawn("out-a"), spawn("out-b"));
        for (name, child) in [("a", a), ("b", b)] {
            let output = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(output.status.success(), "round {round}, process {name} failed:\n{stderr}");
            assert!(!stderr.contains("warning"), "round {round}, process {name}:\n{stderr}");
        }
        for out in ["out-a", "out-b"] {
            let features_dir = dir.path().join(out);
            verify(&features_dir).unwrap();
            assert_eq!(output_vectors(&features_dir), expected, "round {round}, {out}: the same vectors as a lone run");
        }
    }
}

#[test]
fn the_binary_names_each_rejected_image_and_lists_it_in_features_json() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 46);
    let means = image_means(&dataset);
    let (t, dark) = threshold(&means);
    let file = dir.path().join("trap.onnx");
    let output = write_trap_model(&file, Trap::SqrtBelow(t));
    // The tiny spec's input and preprocessing, with the trap model as its conv base.
    let tiny = std::fs::read_to_string(TINY_SPEC).unwrap();
    let (Some(start), Some(end)) = (tiny.find("[input]"), tiny.find("[conv_base]")) else { panic!("{tiny}") };
    let spec = format!(
        "name = \"trap-nan\"\n\n[source.path]\npath = {:?}\n\n{}[conv_base]\noutput = {output:?}\nshape = [4, 1, 1]\npooling = \"flatten\"\n",
        file.to_str().unwrap(),
        &tiny[start..end]
    );
    let spec_file = dir.path().join("trap-nan.toml");
    std::fs::write(&spec_file, spec).unwrap();

    let out = dir.path().join("out");
    let result = features_binary(dir.path())
        .arg("--dataset")
        .arg(dataset.dir())
        .arg("--model")
        .arg(&spec_file)
        .arg("--cache")
        .arg(dir.path().join("cache"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let info = feature_cache::read_features(&out).unwrap();
    assert_eq!(info.rejected.len(), dark);
    for r in &info.rejected {
        let line = format!("warning: rejected {} ({}): ", r.path, r.content_id);
        assert!(stderr.contains(&line) && r.reason.contains("NaN"), "{line} not in:\n{stderr}");
    }
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(stdout.contains(&format!("{dark} rejected")), "{stdout}");
    verify(&out).unwrap();
}

/// kill -9 at ten seeded instants, all on one cache and output folder, then
/// a run to the end: it verifies, holds the vectors of a lone run, and no
/// temporary is left in the cache.
#[test]
fn killed_at_any_instant_then_rerun_gives_the_vectors_of_a_lone_run() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 15, 47);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let expected = lone_run_vectors(&dir.path().join("reference"), &dataset, &model);

    let cache = dir.path().join("cache");
    let out = dir.path().join("out");
    let command = || {
        let mut cmd = features_binary(dir.path());
        cmd.arg("--dataset").arg(dataset.dir()).arg("--model").arg(TINY_SPEC).arg("--cache").arg(&cache);
        cmd.args(["--batch", "1", "--threads", "1", "--out"]).arg(&out);
        cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        cmd
    };
    let started = std::time::Instant::now();
    let lone_dir = dir.path().join("lone");
    let status = features_binary(dir.path())
        .arg("--dataset")
        .arg(dataset.dir())
        .args(["--model", TINY_SPEC, "--batch", "1", "--threads", "1", "--cache"])
        .arg(lone_dir.join("cache"))
        .arg("--out")
        .arg(lone_dir.join("out"))
        .output()
        .unwrap();
    assert!(status.status.success());
    let lone_ms = started.elapsed().as_millis() as u64;
    let mut rng = train_kit::SplitMix64::new(5);
    let mut killed = 0;
    for _ in 0..10 {
        let mut child = command().spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5 + rng.next_u64() % (lone_ms / 2).max(20)));
        if child.try_wait().unwrap().is_none() {
            killed += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    eprintln!("{killed} of 10 runs killed (a lone run takes {lone_ms} ms)");
    assert!(killed >= 1, "none of 10 runs was killed before it ended");
    let last = command().stderr(std::process::Stdio::piped()).output().unwrap();
    assert!(last.status.success(), "{}", String::from_utf8_lossy(&last.stderr));
    verify(&out).unwrap();
    assert_eq!(output_vectors(&out), expected);
    let store_dir = feature_cache::read_features(&out).unwrap().cache.store;
    let leftovers: Vec<_> = std::fs::read_dir(&store_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
