//! Streamed images on a real ingested dataset (many small row groups):
//! every row once per epoch, the same order for the same seed and another
//! for another, the batches an in-memory source gives when the split fits
//! the shuffle buffer; and `finetune train` runs in flat memory: 2,000 rows
//! peak within a fixed bound of 200 rows.
//!
//! The memory test needs the training venv and the ONNX Runtime library,
//! like `tests/training.rs` (`cargo xtask setup`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use dataset::{Dataset, Split};
use finetune::{epoch_order, BatchSource, EpochOrder, ImageSource, StreamedImages};
use ndarray::Array2;

const BIN: &str = env!("CARGO_BIN_EXE_finetune");
const TINY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data-specs/models/tiny-vgg.toml");

fn spec() -> spec::ModelSpec {
    spec::ModelSpec::from_toml(&std::fs::read_to_string(TINY).unwrap()).unwrap()
}

/// Demo images (`per_class` of each class, about `width`×`height`) stored
/// at `stored` px, in row groups of `rows_per_group`.
fn dataset(root: &Path, per_class: usize, (width, height): (u32, u32), stored: u32, rows_per_group: usize) -> PathBuf {
    let images = root.join("images");
    let options = demo::DemoOptions { per_class, width, height, seed: 3, broken_files: false };
    demo::generate(&images, &options).unwrap();
    let mut spec = spec::DatasetSpec::for_root(images.to_str().unwrap());
    spec.size = spec::StoredSize::ShorterSide(stored);
    let out = root.join("dataset");
    let options = ingest::IngestOptions { rows_per_group, ..Default::default() };
    ingest::ingest(&spec, &out, &options, &progress::Silent).unwrap();
    out
}

fn order(images: &StreamedImages, seed: u64, epoch: usize) -> Vec<String> {
    images.order(EpochOrder { seed, epoch, shuffle: true }).unwrap().into_iter().map(|(id, _)| id).collect()
}

#[test]
fn streamed_epochs_see_every_row_once_in_a_seeded_order() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = Dataset::open(&dataset(dir.path(), 12, (48, 40), 36, 4)).unwrap();
    let ids: BTreeSet<String> = dataset.index(Split::Train).unwrap().into_iter().map(|r| r.content_id).collect();
    assert!(ids.len() > 40, "{} training rows", ids.len());
    assert!(dataset.row_groups(Split::Train).unwrap().len() > 10);

    // A buffer smaller than the split: row groups and the buffer shuffle.
    let images = StreamedImages::open(&dataset, Split::Train, &spec(), None).unwrap().with_buffer_rows(8);
    let a = order(&images, 5, 1);
    assert_eq!(a.len(), ids.len());
    assert_eq!(a.iter().cloned().collect::<BTreeSet<_>>(), ids, "every row exactly once");
    assert_eq!(a, order(&images, 5, 1));
    assert_ne!(a, order(&images, 6, 1));
    assert_ne!(a, order(&images, 5, 2));
    let stored: Vec<String> = dataset.index(Split::Train).unwrap().into_iter().map(|r| r.content_id).collect();
    assert_ne!(a, stored);

    // The batches follow that order: labels match, sizes add up.
    let mut source = images.clone();
    let labels: Vec<i64> =
        images.order(EpochOrder { seed: 5, epoch: 1, shuffle: true }).unwrap().into_iter().map(|(_, l)| l).collect();
    let batches: Vec<_> =
        source.batches(EpochOrder { seed: 5, epoch: 1, shuffle: true }, 7).map(|b| b.unwrap()).collect();
    assert_eq!(batches.iter().map(|b| b.labels.len()).sum::<usize>(), ids.len());
    assert!(batches.iter().rev().skip(1).all(|b| b.labels.len() == 7));
    assert_eq!(batches.iter().flat_map(|b| b.labels.clone()).collect::<Vec<_>>(), labels);
}

#[test]
fn a_split_within_the_buffer_gives_the_in_memory_batches() {
    let dir = tempfile::tempdir().unwrap();
    let dataset = Dataset::open(&dataset(dir.path(), 6, (48, 40), 36, 4)).unwrap();
    let augment = Some((finetune::Augment::default(), 9));
    let mut memory = ImageSource::from_dataset(&dataset, Split::Train, &spec(), augment).unwrap();
    let mut streamed = StreamedImages::open(&dataset, Split::Train, &spec(), augment).unwrap();
    assert_eq!(streamed.len(), memory.len());
    assert!(streamed.len() <= streamed.buffer_rows());
    let order = EpochOrder { seed: 4, epoch: 2, shuffle: true };
    let expected: Vec<_> =
        epoch_order(memory.len(), 4, 2, true).chunks(5).map(|chunk| memory.batch(chunk, 2).unwrap()).collect();
    let got: Vec<_> = streamed.batches(order, 5).map(|b| b.unwrap()).collect();
    assert_eq!(got, expected);
    // Random access reads the same images.
    assert_eq!(streamed.batch(&[3, 0], 2).unwrap(), memory.batch(&[3, 0], 2).unwrap());
    assert!(streamed.batch(&[streamed.len()], 2).is_err());
    // Dropping a pass half-way stops its producer.
    let mut pass = streamed.batches(order, 2);
    assert!(pass.next().is_some());
}

/// A head (16 → 8 → classes) trained for one epoch on random vectors.
fn head(root: &Path, classes: &[String]) -> PathBuf {
    let mut rng = train_kit::SplitMix64::new(9);
    let features = Array2::from_shape_vec((40, 16), rng.uniform_vec(0.0, 1.0, 40 * 16)).unwrap();
    let labels: Vec<usize> = (0..40).map(|i| i % classes.len()).collect();
    let config = head::HeadConfig { hidden: vec![8], epochs: 1, ..Default::default() };
    let mut train = head::InMemory::new(features.view(), &labels);
    let trained = head::train_head(&config, classes, &mut train, None, &mut |_| {}).unwrap();
    let out = root.join("head");
    head::io::save(&out, &trained).unwrap();
    out
}

/// `finetune train` (one epoch, `mode` flags) on a dataset of about
/// `rows` images stored at 96 px (about 33 KB each); its peak RSS in MB.
fn peak_rss_mb(rows: usize, mode: &[&str]) -> (usize, f64) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let per_class = rows / demo_classes();
    let dataset_dir = dataset(root, per_class, (120, 100), 96, 64);
    let dataset = Dataset::open(&dataset_dir).unwrap();
    let head = head(root, dataset.classes());
    let out = root.join("finetune");
    let output = Command::new(BIN)
        .arg("train")
        .args(["--dataset", dataset_dir.to_str().unwrap(), "--head", head.to_str().unwrap(), "--model", TINY])
        .args(["--out", out.to_str().unwrap(), "--features-cache", root.join("cache").to_str().unwrap()])
        .args(["--threads", "1", "--epochs", "1", "--batch-size", "32", "--shuffle-buffer", "32"])
        .args(mode)
        .output()
        .unwrap();
    assert!(output.status.success(), "finetune train failed:\n{}", String::from_utf8_lossy(&output.stderr));
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("finetune.json")).unwrap()).unwrap();
    let total = [Split::Train, Split::Validation, Split::Test].iter().map(|&s| dataset.rows(s)).sum();
    (total, summary["peak_rss_mb"].as_f64().expect("finetune.json records peak_rss_mb"))
}

fn demo_classes() -> usize {
    let dir = tempfile::tempdir().unwrap();
    let options = demo::DemoOptions { per_class: 1, width: 16, height: 16, seed: 1, broken_files: false };
    demo::generate(dir.path(), &options).unwrap();
    std::fs::read_dir(dir.path()).unwrap().filter(|e| e.as_ref().unwrap().path().is_dir()).count()
}

/// Holding the split costs about 40 MB more for 2,000 rows than for 200
/// (measured with a shuffle buffer larger than the split); streaming holds
/// a row group, the shuffle buffer and two prepared batches whatever the
/// size.
const BOUND_MB: f64 = 20.0;

fn assert_flat(mode: &[&str]) {
    let (small_rows, small) = peak_rss_mb(200, mode);
    let (large_rows, large) = peak_rss_mb(2000, mode);
    assert!(small_rows >= 150 && large_rows >= 1800, "{small_rows} and {large_rows} rows");
    eprintln!("{mode:?}: peak RSS {small:.1} MB for {small_rows} rows, {large:.1} MB for {large_rows} rows");
    assert!(large - small < BOUND_MB, "peak RSS {large:.1} MB for {large_rows} rows, {small:.1} MB for {small_rows}");
}

#[test]
fn training_memory_is_flat_in_the_dataset_size() {
    assert_flat(&["--prefix", "full"]);
}

/// Cached-prefix mode computes the activations from streamed images and
/// trains on them read back from the feature cache per batch.
#[test]
fn cached_prefix_memory_is_flat_in_the_dataset_size() {
    assert_flat(&["--prefix", "cached", "--no-augment"]);
}
