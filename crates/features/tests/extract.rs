//! Extraction with ONNX Runtime on the tiny generated model, checked
//! against `onnx_graph::reference` (a naive f64 conv/ReLU/max-pool written
//! independently of ORT), with pooling recomputed here; f16 storage;
//! thread-count determinism; and the model/spec mismatch errors.

mod common;

use common::*;
use contracts::features::Dtype;
use dataset::{Dataset, Split};
use feature_cache::{load_split, FeatureCache};
use features::{extract, ExtractOptions, FeaturesError};
use onnx_graph::reference::{self, Tensor};
use spec::{Layout, Pooling};

/// ORT and the reference sum in different orders (the reference in f64):
/// relative to the largest value, they agree to this.
const RELATIVE_TOLERANCE: f32 = 1e-5;

/// The conv base's `[C, H, W]` maps for every row of `split`, computed by
/// the reference evaluator on the preprocessed pixels.
fn reference_maps(dataset: &Dataset, model: &models::ResolvedModel, split: Split) -> (Vec<String>, Tensor) {
    let spec = &model.spec;
    let mut ids = Vec::new();
    let mut input = Vec::new();
    for batch in dataset.batches(split, 64, true) {
        for record in batch.unwrap() {
            let size = (record.stored_width, record.stored_height);
            input.extend(imaging::preprocess::preprocess(&record.pixels, size, &spec.preprocess, &spec.input).unwrap());
            ids.push(record.content_id);
        }
    }
    assert_eq!(spec.input.layout, Layout::Nchw);
    let [w, h] = spec.input.size.map(|v| v as usize);
    let images = Tensor::new(vec![ids.len(), 3, h, w], input);
    let graph = onnx_graph::read_model(&model.conv_base).unwrap();
    let mut out = reference::evaluate(&graph, &[(&spec.input.name, images)], &[&spec.conv_base.output]).unwrap();
    (ids, out.remove(0))
}

/// Pooling written out here, independently of the crate's.
fn pool_by_hand(map: &[f32], [c, h, w]: [usize; 3], pooling: Pooling) -> Vec<f32> {
    match pooling {
        Pooling::Flatten => map.to_vec(),
        Pooling::Avg => {
            (0..c).map(|ch| map[ch * h * w..(ch + 1) * h * w].iter().sum::<f32>() / (h * w) as f32).collect()
        }
        Pooling::Max => {
            (0..c).map(|ch| map[ch * h * w..(ch + 1) * h * w].iter().cloned().reduce(f32::max).unwrap()).collect()
        }
    }
}

fn assert_close(actual: &[f32], expected: &[f32], what: &str) {
    assert_eq!(actual.len(), expected.len(), "{what}: lengths differ");
    let scale = expected.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 1e-3, "{what}: all values near zero, the check would be vacuous");
    let diff = actual.iter().zip(expected).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(diff <= RELATIVE_TOLERANCE * scale, "{what}: max |diff| {diff} > {RELATIVE_TOLERANCE} x {scale}");
}

#[test]
fn vectors_match_the_reference_evaluator_for_every_pooling() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 11);
    let model = resolve(&tiny_spec_64(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let shape = model.spec.conv_base.shape.as_map();

    for split in splits_with_rows(&dataset) {
        let (ids, maps) = reference_maps(&dataset, &model, split);
        let per_image = shape.iter().product::<usize>();
        assert_eq!(maps.dims, [ids.len(), shape[0], shape[1], shape[2]]);
        for pooling in [Pooling::Flatten, Pooling::Avg, Pooling::Max] {
            let options = ExtractOptions { pooling: Some(pooling), batch_size: 3, ..Default::default() };
            let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
            let store = cache.store(&summary.key).unwrap();
            let loaded = load_split(&dataset, &store, split).unwrap();
            assert_eq!(loaded.ids, ids, "rows come back in dataset order");
            let expected: Vec<f32> =
                maps.data.chunks_exact(per_image).flat_map(|m| pool_by_hand(m, shape, pooling)).collect();
            let actual: Vec<f32> = loaded.features.iter().copied().collect();
            assert_close(&actual, &expected, &format!("{split} {pooling:?}"));
        }
    }
}

#[test]
fn the_default_spec_flattens_16x1x1_maps_matching_the_reference() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 12);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let summary = extract(&dataset, &model, &cache, &ExtractOptions::default(), &progress::Silent).unwrap();
    assert_eq!(summary.key.embedding_len, 16);
    assert_eq!(summary.hits + summary.computed, dataset.info().total_rows());
    let store = cache.store(&summary.key).unwrap();
    let (_, maps) = reference_maps(&dataset, &model, Split::Train);
    let loaded = load_split(&dataset, &store, Split::Train).unwrap();
    assert_eq!(loaded.features.dim(), (dataset.rows(Split::Train), 16));
    assert_close(loaded.features.as_slice().unwrap(), &maps.data, "train flatten");
    let index = dataset.index(Split::Train).unwrap();
    assert_eq!(loaded.labels, index.iter().map(|r| r.label_index).collect::<Vec<_>>());
}

#[test]
fn f16_storage_round_trips_within_half_precision() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 13);
    let model = resolve(&tiny_spec_64(), &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();
    let run = |dtype| {
        let summary =
            extract(&dataset, &model, &cache, &ExtractOptions { dtype, ..Default::default() }, &progress::Silent)
                .unwrap();
        let store = cache.store(&summary.key).unwrap();
        load_split(&dataset, &store, Split::Train).unwrap()
    };
    let full = run(Dtype::F32);
    let half = run(Dtype::F16);
    assert_ne!(full.features, half.features, "f16 is a separate key and really rounds");
    for (&h, &f) in half.features.iter().zip(full.features.iter()) {
        // Round to nearest: within half a unit in the last place (2^-11
        // relative) for normal values, 2^-25 absolute for subnormal ones.
        let bound = (f.abs() * 2f32.powi(-11)).max(2f32.powi(-25));
        assert!((h - f).abs() <= bound, "{f} stored as f16 reads back as {h}");
        assert_eq!(h, half::f16::from_f32(f).to_f32(), "exactly the nearest f16");
    }
}

#[test]
fn one_and_two_threads_give_the_same_bits() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 4, 14);
    let model = resolve(&tiny_spec_64(), &dir.path().join("models"));
    let load = |threads: usize| {
        let cache = FeatureCache::open(&dir.path().join(format!("cache-{threads}"))).unwrap();
        let options = ExtractOptions { threads: Some(threads), batch_size: 4, ..Default::default() };
        let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
        assert_eq!(summary.threads, threads);
        load_split(&dataset, &cache.store(&summary.key).unwrap(), Split::Train).unwrap()
    };
    let one = load(1);
    let two = load(2);
    let bits = |f: &ndarray::Array2<f32>| f.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
    assert_eq!(bits(&one.features), bits(&two.features), "ORT's results depend on the thread count");
}

fn expect_error(model: &models::ResolvedModel, dir: &std::path::Path) -> FeaturesError {
    let dataset = Dataset::open(&dir.join("data")).unwrap();
    let cache = FeatureCache::open(&dir.join("cache")).unwrap();
    extract(&dataset, model, &cache, &ExtractOptions::default(), &progress::Silent).unwrap_err()
}

#[test]
fn a_spec_that_does_not_match_the_model_is_a_clear_error() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    demo_dataset(dir.path(), 2, 15);
    let model = resolve(&tiny_spec(), &dir.path().join("models"));
    let conv_base = model.conv_base.display().to_string();

    let mut wrong_name = model.clone();
    wrong_name.spec.input.name = "image".into();
    let err = expect_error(&wrong_name, dir.path()).to_string();
    assert!(err.contains(&conv_base) && err.contains("'image'") && err.contains("'data'"), "{err}");
    assert!(err.contains("fix [input] in the model spec"), "{err}");

    let mut wrong_layout = model.clone();
    wrong_layout.spec.input.layout = Layout::Nhwc;
    let err = expect_error(&wrong_layout, dir.path()).to_string();
    assert!(err.contains(&conv_base) && err.contains("not nhwc with 3 channels"), "{err}");

    let mut wrong_output = model.clone();
    wrong_output.spec.conv_base.output = "no_such_tensor".into();
    let err = expect_error(&wrong_output, dir.path());
    assert!(matches!(err, FeaturesError::UnknownOutput { .. }), "{err}");
    let err = err.to_string();
    assert!(err.contains(&conv_base) && err.contains("no_such_tensor") && err.contains("conv_base.output"), "{err}");
    assert!(err.contains(&model.spec.conv_base.output), "lists the outputs there are: {err}");

    let mut wrong_shape = model.clone();
    wrong_shape.spec.conv_base.shape = [16, 2, 2].into();
    let err = expect_error(&wrong_shape, dir.path()).to_string();
    assert!(err.contains("conv_base.shape") && err.contains("16, 2, 2]") && err.contains("16, 1, 1]"), "{err}");
}

/// The tiny model with global average pooling and a flatten after its conv
/// base, written to `path`: a backbone exported with its pooling built in,
/// whose cut output is already pooled, `[N, 16]`. Returns that output's name.
fn write_pooled_tiny_model(path: &std::path::Path) -> &'static str {
    use onnx_graph::proto::{data_type, NodeProto};
    use onnx_graph::shape::{tensor_value_info, Dim};
    const POOL: &str = "/head/GlobalAveragePool_output_0";
    const POOLED: &str = "/head/Flatten_output_0";
    let mut model = onnx_graph::vgg::tiny_vgg(7);
    let graph = onnx_graph::graph_mut(&mut model).unwrap();
    let node = |op: &str, input: &str, output: &str, attribute| NodeProto {
        name: output.trim_end_matches("_output_0").to_owned(),
        op_type: op.to_owned(),
        input: vec![input.to_owned()],
        output: vec![output.to_owned()],
        attribute,
        ..Default::default()
    };
    graph.node.push(node("GlobalAveragePool", onnx_graph::vgg::CONV_BASE_OUTPUT, POOL, vec![]));
    graph.node.push(node("Flatten", POOL, POOLED, vec![onnx_graph::builder::int_attribute("axis", 1)]));
    graph.output.push(tensor_value_info(POOLED, data_type::FLOAT, Some(&[Dim::named("N"), Dim::Fixed(16)])));
    onnx_graph::write_model(&model, path).unwrap();
    POOLED
}

/// Runs the conv base in ONNX Runtime directly on one preprocessed image.
fn ort_output(model: &models::ResolvedModel, pixels: &[f32]) -> (Vec<i64>, Vec<f32>) {
    use runtime::ort;
    let spec = &model.spec;
    let [w, h] = spec.input.size.map(|v| v as i64);
    let options = runtime::SessionOptions::default().intra_threads(1);
    let mut session = runtime::open_session(&options, runtime::ModelSource::File(&model.conv_base)).unwrap();
    let input = ort::value::Tensor::from_array((vec![1, 3, h, w], pixels.to_vec())).unwrap();
    let outputs = session.run(ort::inputs![spec.input.name.as_str() => input]).unwrap();
    let (shape, data) = outputs[spec.conv_base.output.as_str()].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), data.to_vec())
}

#[test]
fn an_already_pooled_conv_base_is_cached_as_ort_gives_it() {
    require_ort();
    let dir = tempfile::tempdir().unwrap();
    let dataset = demo_dataset(dir.path(), 3, 16);
    let file = dir.path().join("tiny-pooled.onnx");
    let output = write_pooled_tiny_model(&file);
    let mut spec = tiny_spec_64();
    spec.name = "tiny-vgg-pooled".into();
    spec.source = spec::ModelSource::Path { path: file.to_string_lossy().into_owned(), sha256: None };
    spec.conv_base.output = output.into();
    spec.conv_base.shape = [16].into();
    spec.conv_base.pooling = Pooling::Flatten;
    spec.validate().unwrap();
    let model = resolve(&spec, &dir.path().join("models"));
    let cache = FeatureCache::open(&dir.path().join("cache")).unwrap();

    // One image a batch, as run by hand below: the same computation, so the same bits.
    let options = ExtractOptions { batch_size: 1, threads: Some(1), ..Default::default() };
    let summary = extract(&dataset, &model, &cache, &options, &progress::Silent).unwrap();
    assert_eq!(summary.key.embedding_len, 16);
    assert_eq!(summary.computed, dataset.info().total_rows());
    let store = cache.store(&summary.key).unwrap();
    let unpooled = resolve(&tiny_spec_64(), &dir.path().join("models"));
    for split in splits_with_rows(&dataset) {
        let loaded = load_split(&dataset, &store, split).unwrap();
        let (ids, maps) = reference_maps(&dataset, &unpooled, split);
        assert_eq!(loaded.ids, ids);
        let per_image = maps.data.len() / ids.len();
        let mut row = 0;
        for batch in dataset.batches(split, 64, true) {
            for record in batch.unwrap() {
                let size = (record.stored_width, record.stored_height);
                let pixels =
                    imaging::preprocess::preprocess(&record.pixels, size, &spec.preprocess, &spec.input).unwrap();
                let (shape, from_ort) = ort_output(&model, &pixels);
                assert_eq!(shape, [1, 16], "the graph's own output is [N, C]");
                let cached = loaded.features.row(row).to_vec();
                assert_eq!(cached, from_ort, "{split} row {row}: the cached vector is ORT's output");
                // And it is the global average of the reference evaluator's 16x2x2 map.
                let map = &maps.data[row * per_image..(row + 1) * per_image];
                assert_close(&cached, &pool_by_hand(map, [16, 2, 2], Pooling::Avg), &format!("{split} row {row}"));
                row += 1;
            }
        }
        assert_eq!(row, loaded.ids.len());
    }

    // Average or max pooling of a vector already pooled is refused, not silently cached twice.
    let avg = ExtractOptions { pooling: Some(Pooling::Avg), ..Default::default() };
    let err = extract(&dataset, &model, &cache, &avg, &progress::Silent).unwrap_err();
    assert!(matches!(err, FeaturesError::AlreadyPooled { .. }), "{err}");
    assert!(err.to_string().contains("conv_base.shape = [16] is already pooled"), "{err}");

    // A [C, H, W] spec against this [N, C] output is the shape error, both shapes named.
    let mut as_map = model.clone();
    as_map.spec.conv_base.shape = [16, 1, 1].into();
    let fresh = FeatureCache::open(&dir.path().join("cache-2")).unwrap();
    let err = extract(&dataset, &as_map, &fresh, &ExtractOptions::default(), &progress::Silent).unwrap_err();
    let (err, n) = (err.to_string(), dataset.info().total_rows());
    assert!(err.contains("conv_base.shape"), "{err}");
    assert!(err.contains(&format!("[{n}, 16] for")) && err.contains(&format!("says [{n}, 16, 1, 1]")), "{err}");
}
