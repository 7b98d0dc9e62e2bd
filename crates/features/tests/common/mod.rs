//! Fixtures shared by the integration tests: the tiny generated model and
//! small demo datasets.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use dataset::Dataset;
use ingest::IngestOptions;
use models::ResolvedModel;
use spec::{DatasetSpec, ModelSpec, StoredSize};

/// ONNX Runtime, or a panic that says how to set it up: these tests check
/// nothing without it, so they must not pass silently.
pub fn require_ort() {
    if let Err(e) = runtime::init_ort() {
        panic!("ONNX Runtime is needed for this test: {e}");
    }
}

pub fn tiny_spec() -> ModelSpec {
    ModelSpec::from_toml(include_str!("../../../../data-specs/models/tiny-vgg.toml")).unwrap()
}

/// The tiny model at a 64x64 input: its conv base gives 16x2x2 maps, so
/// average and max pooling differ from flattening.
pub fn tiny_spec_64() -> ModelSpec {
    let mut spec = tiny_spec();
    spec.input.size = [64, 64];
    spec.preprocess.resize = spec::Resize { shorter_side: Some(72), center_crop: Some([64, 64]), exact: None };
    spec.conv_base.shape = [16, 2, 2].into();
    spec.validate().unwrap();
    spec
}

pub fn resolve(spec: &ModelSpec, models_cache: &Path) -> ResolvedModel {
    models::resolve(spec, models_cache).unwrap()
}

/// Writes a demo image folder (`per_class` images of about 32x24 per
/// class, no broken files) under `root`.
pub fn demo_images(root: &Path, per_class: usize, seed: u64) {
    demo::generate(root, &demo::DemoOptions { per_class, width: 32, height: 24, seed, broken_files: false }).unwrap();
}

/// Ingests `root` into `out` at shorter side 36.
pub fn ingest(root: &Path, out: &Path) -> Dataset {
    let mut spec = DatasetSpec::for_root(root.to_string_lossy());
    spec.size = StoredSize::ShorterSide(36);
    ingest::ingest(&spec, out, &IngestOptions::default(), &progress::Silent).unwrap();
    Dataset::open(out).unwrap()
}

/// A demo dataset in `dir/data`, from images in `dir/images`.
pub fn demo_dataset(dir: &Path, per_class: usize, seed: u64) -> Dataset {
    demo_images(&dir.join("images"), per_class, seed);
    ingest(&dir.join("images"), &dir.join("data"))
}

/// Splits of a dataset that have rows.
pub fn splits_with_rows(dataset: &Dataset) -> Vec<dataset::Split> {
    dataset::Split::ALL.into_iter().filter(|&s| dataset.rows(s) > 0).collect()
}

/// Every split with rows, loaded from `store`: the vectors a features run left.
pub fn load_splits(dataset: &Dataset, store: &feature_cache::Store) -> Vec<feature_cache::SplitFeatures> {
    splits_with_rows(dataset).into_iter().map(|s| feature_cache::load_split(dataset, store, s).unwrap()).collect()
}

/// The committed segment files of a store folder, sorted by name (oldest first).
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    files
}
