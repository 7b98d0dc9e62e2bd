//! The feature cache: hits, new content, new keys, damaged and foreign
//! files, compaction, and the segment schema as Arrow sees it.

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_schema::DataType;
use common::*;
use contracts::features::{CacheKey, Dtype};
use dataset::{Dataset, Split};
use feature_cache::{load_split, stream_split, CacheError, FeatureCache, SplitFeatures};
use features::{extract, ExtractOptions};
use image::{DynamicImage, ImageFormat};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use spec::Pooling;

fn run(dataset: &Dataset, model: &models::ResolvedModel, cache: &FeatureCache) -> features::ExtractSummary {
    let options = ExtractOptions { batch_size: 4, ..Default::default() };
    extract(dataset, model, cache, &options, &progress::Silent).unwrap()
}

fn load_all(dataset: &Dataset, store: &feature_cache::Store) -> Vec<(Split, SplitFeatures)> {
    splits_with_rows(dataset).into_iter().map(|s| (s, load_split(dataset, store, s).unwrap())).collect()
}

#[test]
fn a_second_run_computes_nothing_and_new_images_only_are_computed() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 21);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let rows = dataset.info().total_rows();

    let first = run(&dataset, &model, &cache);
    assert_eq!((first.hits, first.computed), (0, rows));
    let second = run(&dataset, &model, &cache);
    assert_eq!((second.hits, second.computed), (rows, 0), "everything is a hit");
    assert_eq!(first.key, second.key);

    // Five new images (new content) in the folder, re-ingested.
    let mut rng = train_kit::SplitMix64::new(999);
    for i in 0..5 {
        let class = i % demo::CLASSES.len();
        let img = demo::render(class, 30 + i as u32, 26, &mut rng);
        let path = dir.path().join("images").join(demo::CLASSES[class]).join(format!("new-{i}.png"));
        std::fs::write(path, demo::encode(&DynamicImage::ImageRgb8(img), ImageFormat::Png)).unwrap();
    }
    let grown = ingest(&dir.path().join("images"), &dir.path().join("data"));
    assert_eq!(grown.info().total_rows(), rows + 5);
    let third = run(&grown, &model, &cache);
    assert_eq!((third.hits, third.computed), (rows, 5), "exactly the five new images are computed");
    let store = cache.store(&third.key).unwrap();
    let loaded = load_all(&grown, &store);
    assert_eq!(loaded.iter().map(|(_, f)| f.features.nrows()).sum::<usize>(), rows + 5);
}

#[test]
fn another_preprocessing_or_model_is_another_key() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 22);
    let rows = dataset.info().total_rows();
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let models_dir = dir.path().join("models");
    let base = resolve(&tiny_spec(), &models_dir);
    let first = run(&dataset, &base, &cache);

    let mut other_mean = tiny_spec();
    other_mean.preprocess.mean[0] = 0.5;
    let other_mean = resolve(&other_mean, &models_dir);
    let mean_run = run(&dataset, &other_mean, &cache);
    assert_ne!(mean_run.key.preprocess_fingerprint, first.key.preprocess_fingerprint);
    assert_eq!(mean_run.key.model_fingerprint, first.key.model_fingerprint);
    assert_eq!((mean_run.hits, mean_run.computed), (0, rows), "a new preprocessing recomputes everything");

    let mut other_seed = tiny_spec();
    other_seed.source = spec::ModelSource::Generated { model: "tiny-vgg".into(), seed: 8 };
    let other_seed = resolve(&other_seed, &models_dir);
    let seed_run = run(&dataset, &other_seed, &cache);
    assert_ne!(seed_run.key.model_fingerprint, first.key.model_fingerprint);
    assert_eq!((seed_run.hits, seed_run.computed), (0, rows), "a new model recomputes everything");

    let pooled = extract(
        &dataset,
        &base,
        &cache,
        &ExtractOptions { pooling: Some(Pooling::Max), dtype: Dtype::F16, ..Default::default() },
        &progress::Silent,
    )
    .unwrap();
    assert_eq!((pooled.hits, pooled.computed), (0, rows), "pooling and dtype are part of the key");

    // Four folders, each with its key (and the hidden folder of their locks); the first key still hits.
    let folders = std::fs::read_dir(cache.root()).unwrap().map(|e| e.unwrap().file_name());
    assert_eq!(folders.filter(|n| !n.to_string_lossy().starts_with('.')).count(), 4);
    assert!(cache.root().join(feature_cache::LOCKS_DIR).is_dir());
    assert_eq!(run(&dataset, &base, &cache).computed, 0);
    // Vectors of different keys differ.
    let a = load_split(&dataset, &cache.store(&first.key).unwrap(), Split::Train).unwrap();
    let b = load_split(&dataset, &cache.store(&seed_run.key).unwrap(), Split::Train).unwrap();
    assert_ne!(a.features, b.features);
}

#[test]
fn truncated_and_foreign_files_are_moved_aside_and_recomputed() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 23);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let rows = dataset.info().total_rows();
    let first = run(&dataset, &model, &cache);
    let store = cache.store(&first.key).unwrap();
    let before = load_all(&dataset, &store);

    let files = segments(store.dir());
    assert!(files.len() >= 2, "one segment per batch of 4: {files:?}");
    // Truncate one segment to half its length.
    let victim = &files[1];
    let victim_rows = ParquetRecordBatchReaderBuilder::try_new(File::open(victim).unwrap())
        .unwrap()
        .metadata()
        .file_metadata()
        .num_rows() as usize;
    let len = std::fs::metadata(victim).unwrap().len();
    File::options().write(true).open(victim).unwrap().set_len(len / 2).unwrap();
    // A foreign Parquet file: a dataset shard. And a segment of another key.
    let shard = dataset.dir().join(&dataset.info().split(Split::Train).shards[0]);
    let foreign = store.dir().join("aaa-foreign.parquet");
    std::fs::copy(&shard, &foreign).unwrap();
    let other_key = {
        let options = ExtractOptions { pooling: Some(Pooling::Avg), ..Default::default() };
        let s = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
        s.key
    };
    let other_segment = segments(cache.store(&other_key).unwrap().dir()).remove(0);
    let misplaced = store.dir().join("seg-0-misplaced.parquet");
    std::fs::copy(&other_segment, &misplaced).unwrap();

    let again = run(&dataset, &model, &cache);
    assert_eq!(again.computed, victim_rows, "only the truncated segment's rows are recomputed");
    assert_eq!(again.hits, rows - victim_rows);
    let reasons: Vec<(PathBuf, String)> =
        again.quarantined.iter().map(|q| (q.file.clone(), q.reason.clone())).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    let reason_of = |p: &Path| reasons.iter().find(|(f, _)| f == p).map(|(_, r)| r.clone()).unwrap_or_default();
    assert!(reason_of(victim).contains("truncated or corrupt"), "{reasons:?}");
    assert!(reason_of(&foreign).contains("foreign"), "{reasons:?}");
    assert!(reason_of(&misplaced).contains("another cache key"), "{reasons:?}");
    for q in &again.quarantined {
        let moved = q.moved_to.as_ref().expect("moved aside");
        assert!(
            moved.starts_with(store.dir().join(feature_cache::QUARANTINE_DIR)) && moved.exists() && !q.file.exists()
        );
        assert!(q.to_string().contains(&q.file.display().to_string()), "the message names the file");
    }
    // Everything reads back, equal to the first run's vectors.
    assert_eq!(load_all(&dataset, &store), before);
    assert_eq!(run(&dataset, &model, &cache).computed, 0);
}

#[test]
fn a_segment_damaged_inside_fails_loading_clearly_and_is_recomputed() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 24);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let first =
        extract(&dataset, &model, &cache, &ExtractOptions { batch_size: 64, ..Default::default() }, &progress::Silent)
            .unwrap();
    let store = cache.store(&first.key).unwrap();
    let before = load_all(&dataset, &store);
    let files = segments(store.dir());
    assert_eq!(files.len(), 1);
    // Overwrite bytes in the middle (the vectors' pages); the footer stays intact.
    let mut bytes = std::fs::read(&files[0]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid - 200..mid + 200].iter_mut().for_each(|b| *b ^= 0x5a);
    std::fs::write(&files[0], &bytes).unwrap();

    let split = splits_with_rows(&dataset)[0];
    match load_split(&dataset, &store, split) {
        Err(CacheError::Cache { path, reason }) => {
            assert_eq!(path, files[0]);
            assert!(reason.contains("run `features` again"), "{reason}");
        }
        // Damage that happens to hit only the ids is caught by the scan.
        Err(CacheError::Missing { quarantined, .. }) => assert_eq!(quarantined.len(), 1),
        other => panic!("damage went unnoticed: {other:?}"),
    }
    let again = run(&dataset, &model, &cache);
    assert_eq!(again.computed, dataset.info().total_rows());
    assert_eq!(load_all(&dataset, &store), before);
}

#[test]
fn small_segments_are_compacted_and_streaming_matches_loading() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 25);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let options = ExtractOptions { batch_size: 1, ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    let store = cache.store(&summary.key).unwrap();
    // 20 one-image segments were merged into one.
    assert_eq!(segments(store.dir()).len(), 1);
    assert_eq!(store.scan().unwrap().len(), dataset.info().total_rows());
    for split in splits_with_rows(&dataset) {
        let whole = load_split(&dataset, &store, split).unwrap();
        let batches: Vec<SplitFeatures> =
            stream_split(&dataset, &store, split, 3).unwrap().collect::<Result<_, _>>().unwrap();
        assert!(batches.iter().all(|b| b.features.nrows() <= 3));
        let views: Vec<_> = batches.iter().map(|b| b.features.view()).collect();
        assert_eq!(ndarray::concatenate(ndarray::Axis(0), &views).unwrap(), whole.features);
        assert_eq!(batches.iter().flat_map(|b| b.ids.clone()).collect::<Vec<_>>(), whole.ids);
        assert_eq!(batches.iter().flat_map(|b| b.labels.clone()).collect::<Vec<_>>(), whole.labels);
    }
}

#[test]
fn missing_vectors_are_reported_not_invented() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 26);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let key = feature_cache::cache_key(dataset.info(), &model.spec, &model.fingerprint, Pooling::Flatten, Dtype::F32);
    let store = cache.store(&key).unwrap();
    let err = load_split(&dataset, &store, Split::Train).unwrap_err().to_string();
    assert!(err.contains("are not cached") && err.contains("run `features`"), "{err}");
    assert!(stream_split(&dataset, &store, Split::Train, 4).is_err());
}

#[test]
fn segments_are_plain_parquet_with_fixed_size_lists_and_their_key() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 2, 27);
    let model = resolve(&tiny_spec_64(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    for (dtype, item) in [(Dtype::F32, DataType::Float32), (Dtype::F16, DataType::Float16)] {
        let options = ExtractOptions { dtype, pooling: Some(Pooling::Avg), ..Default::default() };
        let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
        let store = cache.store(&summary.key).unwrap();
        let key_json: CacheKey =
            serde_json::from_str(&std::fs::read_to_string(store.dir().join(feature_cache::KEY_FILE)).unwrap()).unwrap();
        assert_eq!(key_json, summary.key);
        for segment in segments(store.dir()) {
            let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(&segment).unwrap()).unwrap();
            let schema = reader.schema().clone();
            assert_eq!(schema.field(0).name(), "content_id");
            assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
            match schema.field(1).data_type() {
                DataType::FixedSizeList(field, 16) => assert_eq!(field.data_type(), &item),
                other => panic!("embedding is {other}"),
            }
            let kv = reader.metadata().file_metadata().key_value_metadata().unwrap();
            let key = kv.iter().find(|e| e.key == feature_cache::META_KEY).unwrap().value.clone().unwrap();
            assert_eq!(serde_json::from_str::<CacheKey>(&key).unwrap(), summary.key);
            let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert!(rows > 0);
        }
    }
}
