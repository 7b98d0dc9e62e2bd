//! The shipped ONNX model zoo specs (ResNet-50 v1, MobileNetV2, EfficientNet-
//! Lite4), each against a generated stand-in with the real file's tensor
//! names, layout and batch (the real files cannot be downloaded here). The
//! spec is used as shipped except its `source.url`, which points at a local
//! server with the stand-in's checksum and size; it is resolved the way
//! `cargo xtask fetch-model` and the stages do (download, verify, cut), and
//! the cut conv base runs in ONNX Runtime.
//!
//! The ONNX Runtime checks need the pinned library (`cargo xtask setup`, or
//! `ORT_DYLIB_PATH`); without it they fail and say so.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use models::{resolve_with_progress, ModelError, ResolvedModel};
use onnx_graph::proto::data_type;
use onnx_graph::{Dim, ModelProto};
use runtime::ort;
use spec::{Layout, ModelSource, ModelSpec};

mod common;

use common::server::{Reply, Seen, Server};
use common::stand_in::{blocks_in_file_order, conv_base_shape, input_dims, stand_in, RealFile};

/// A shipped spec and what its real file has that the spec does not say
/// (docs/backbones-research.md).
struct Zoo {
    file: &'static str,
    real: RealFile,
}

fn resnet50() -> Zoo {
    // Input `data` [N, 3, 224, 224]; output `resnetv17_dense0_fwd` (scores).
    Zoo {
        file: "resnet50-onnx-zoo.toml",
        real: RealFile { batch: Dim::named("N"), output: "resnetv17_dense0_fwd", softmax: false },
    }
}

fn mobilenetv2() -> Zoo {
    // Input `data` [1, 3, 224, 224]: the batch is fixed in the file.
    Zoo {
        file: "mobilenetv2-onnx-zoo.toml",
        real: RealFile { batch: Dim::Fixed(1), output: "mobilenetv20_output_flatten0_reshape0", softmax: false },
    }
}

fn efficientnet_lite4() -> Zoo {
    // Input `images:0` [1, 224, 224, 3] (NHWC, batch fixed); output `Softmax:0`.
    Zoo {
        file: "efficientnet-lite4-onnx-zoo.toml",
        real: RealFile { batch: Dim::Fixed(1), output: "Softmax:0", softmax: true },
    }
}

fn spec_text(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/models").join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shipped(zoo: &Zoo) -> (ModelSpec, String) {
    let text = spec_text(zoo.file);
    let spec = ModelSpec::from_toml(&text).unwrap_or_else(|e| panic!("{}: {e}", zoo.file));
    (spec, text)
}

/// The URL's path, from the slash after the host.
fn url_path(url: &str) -> &str {
    let after_scheme = &url[url.find("://").expect("an absolute URL") + 3..];
    &after_scheme[after_scheme.find('/').expect("a path")..]
}

/// The shipped spec with only its source changed: the same path on
/// `base_url`, and `bytes`' checksum and size.
fn served_at(spec: &ModelSpec, base_url: &str, bytes: &[u8]) -> ModelSpec {
    let ModelSource::Url { url, .. } = &spec.source else { panic!("{} is not a url source", spec.name) };
    let source = ModelSource::Url {
        url: format!("{base_url}{}", url_path(url)),
        sha256: spec::sha256_hex(bytes),
        size: bytes.len() as u64,
    };
    ModelSpec { source, ..spec.clone() }
}

fn is_free(dim: &Dim) -> bool {
    !matches!(dim, Dim::Fixed(_))
}

/// Every tensor computed from `from`, and every name those nodes read.
fn downstream(model: &ModelProto, from: &str) -> (HashSet<String>, HashSet<String>) {
    let mut computed = HashSet::from([from.to_owned()]);
    let mut read = HashSet::new();
    for node in &onnx_graph::graph(model).unwrap().node {
        if node.input.iter().any(|i| computed.contains(i)) {
            computed.extend(node.output.iter().cloned());
            read.extend(node.input.iter().cloned());
        }
    }
    (computed, read)
}

/// A batch of `batch` images in the spec's layout and size, varied values.
fn images(spec: &ModelSpec, batch: i64) -> (Vec<i64>, Vec<f32>) {
    let dims: Vec<i64> = input_dims(spec, Dim::Fixed(batch)).iter().map(|d| d.fixed().unwrap()).collect();
    let count = dims.iter().product::<i64>() as usize;
    (dims, (0..count).map(|k| ((k * 7919) % 255) as f32 / 255.0 - 0.5).collect())
}

/// Runs a model in ONNX Runtime and returns one output's shape and values.
fn run_ort(
    model: runtime::ModelSource<'_>,
    input: &str,
    batch: (Vec<i64>, Vec<f32>),
    output: &str,
) -> (Vec<i64>, Vec<f32>) {
    let options = runtime::SessionOptions::default().intra_threads(1);
    let mut session = runtime::open_session(&options, model).unwrap_or_else(|e| {
        panic!("ONNX Runtime is needed for this test (cargo xtask setup) and must load the model: {e}")
    });
    let value = ort::value::Tensor::from_array(batch).unwrap();
    let results = session.run(ort::inputs![input => value]).unwrap();
    let (shape, values) = results[output].try_extract_tensor::<f32>().unwrap();
    (shape.iter().copied().collect(), values.to_vec())
}

/// Serves the stand-in for `zoo`'s spec, resolves the spec against it and
/// checks the download, the cut, the blocks, the conv base in ONNX Runtime
/// and the errors for wrong tensor names.
fn check_zoo_spec(zoo: &Zoo) {
    let (shipped, text) = shipped(zoo);
    let full = stand_in(&shipped, &text, &zoo.real);
    let bytes = onnx_graph::encode_model(&full);
    let shape = conv_base_shape(&shipped);

    let server = Server::start(vec![Reply::File(bytes.clone())]);
    let spec = served_at(&shipped, &server.base_url, &bytes);
    let cache = tempfile::tempdir().unwrap();
    let resolved: ResolvedModel =
        resolve_with_progress(&spec, cache.path(), &progress::Silent).unwrap_or_else(|e| panic!("{}: {e}", zoo.file));

    // Through the URL: one request, for the real file's path.
    let ModelSource::Url { url, .. } = &shipped.source else { unreachable!() };
    assert_eq!(server.finish(), [Seen { path: url_path(url).to_owned(), range_start: None }]);
    assert_eq!(std::fs::read(&resolved.full).unwrap(), bytes);
    assert_eq!(resolved.full.file_name(), Path::new(url_path(url)).file_name(), "named after the URL");
    assert!(resolved.pretrained);

    // The cut: the conv base output is the only output, batch and spatial dims free.
    let cut = onnx_graph::read_model(&resolved.conv_base).unwrap();
    let outputs = onnx_graph::outputs(&cut).unwrap();
    assert_eq!(outputs.iter().map(|o| o.name.as_str()).collect::<Vec<_>>(), [shipped.conv_base.output.as_str()]);
    let out_dims = outputs[0].dims.clone().expect("the conv base output has a known rank");
    assert_eq!(out_dims.len(), 1 + shape.len(), "{out_dims:?}");
    assert!(is_free(&out_dims[0]), "batch of the conv base output is fixed: {out_dims:?}");
    assert_eq!(out_dims[1], Dim::Fixed(shape[0] as i64), "channels of {out_dims:?}");
    let inputs = onnx_graph::inputs(&cut).unwrap();
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].name, shipped.input.name);
    let in_dims = inputs[0].dims.clone().unwrap();
    let (h, w) = if shipped.input.layout == Layout::Nchw { (2, 3) } else { (1, 2) };
    assert!(is_free(&in_dims[0]) && is_free(&in_dims[h]) && is_free(&in_dims[w]), "{in_dims:?}");
    // ... and the classifier is gone.
    let names = onnx_graph::tensor_names(onnx_graph::graph(&cut).unwrap()).into_iter().collect::<HashSet<_>>();
    assert!(!names.contains(zoo.real.output) && !names.contains("standin/head/dense/weight"), "the tail was kept");
    assert!(onnx_graph::graph(&cut).unwrap().node.len() < onnx_graph::graph(&full).unwrap().node.len());

    // Each block: its input is in the conv base, and its params are f32
    // initializers read on the way from it to the conv base output.
    let floats: HashSet<String> = onnx_graph::initializers(&cut)
        .unwrap()
        .into_iter()
        .filter(|t| t.elem_type == data_type::FLOAT)
        .map(|t| t.name)
        .collect();
    for (name, block) in blocks_in_file_order(&shipped, &text) {
        let (computed, read) = downstream(&cut, &block.input);
        assert!(names.contains(block.input.as_str()), "block {name}: no tensor {}", block.input);
        assert!(computed.contains(&shipped.conv_base.output), "block {name}: the conv base does not follow it");
        for param in &block.params {
            assert!(floats.contains(param) && read.contains(param), "block {name}: {param} is not trained after it");
        }
    }

    // In stock ONNX Runtime: a batch of 2 gives [2, ..shape], and the same
    // features as the full model gives for each image alone.
    let batch = images(&shipped, 2);
    let (dims, features) = run_ort(
        runtime::ModelSource::File(&resolved.conv_base),
        &shipped.input.name,
        batch.clone(),
        &shipped.conv_base.output,
    );
    let expected: Vec<i64> = [2].into_iter().chain(shape.iter().map(|&d| d as i64)).collect();
    assert_eq!(dims, expected, "conv base output in ONNX Runtime");
    let mut exposed = full.clone();
    onnx_graph::expose_output(&mut exposed, &shipped.conv_base.output).unwrap();
    let per_image = batch.1.len() / 2;
    let first = (images(&shipped, 1).0, batch.1[..per_image].to_vec());
    let (_, from_full) = run_ort(
        runtime::ModelSource::Memory(&onnx_graph::encode_model(&exposed)),
        &shipped.input.name,
        first,
        &shipped.conv_base.output,
    );
    let first_features = &features[..features.len() / 2];
    let max_diff = from_full.iter().zip(first_features).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert_eq!(from_full.len(), first_features.len());
    assert!(max_diff <= 1e-4, "the cut conv base differs from the full model by {max_diff}");
    assert!(first_features.iter().any(|&v| v.abs() > 1e-3), "features all near zero: the check would be vacuous");

    // Wrong tensor names are errors naming the tensor (the file is cached now: no download).
    let mut wrong = spec.clone();
    wrong.conv_base.output = format!("{}_typo", shipped.conv_base.output);
    let err = resolve_with_progress(&wrong, cache.path(), &progress::Silent).unwrap_err().to_string();
    assert!(err.contains(&wrong.conv_base.output) && err.contains(&shipped.name), "{err}");
    let mut wrong = spec.clone();
    wrong.input.name = "input_typo".into();
    let err = resolve_with_progress(&wrong, cache.path(), &progress::Silent).unwrap_err().to_string();
    assert!(err.contains("\"input_typo\"") && err.contains(&shipped.name), "{err}");
}

#[test]
fn resnet50_spec_downloads_cuts_and_runs_on_a_stand_in() {
    check_zoo_spec(&resnet50());
}

#[test]
fn mobilenetv2_spec_with_a_fixed_batch_downloads_cuts_and_runs_on_a_stand_in() {
    check_zoo_spec(&mobilenetv2());
}

#[test]
fn efficientnet_lite4_spec_with_nhwc_input_downloads_cuts_and_runs_on_a_stand_in() {
    check_zoo_spec(&efficientnet_lite4());
}

#[test]
fn a_download_that_does_not_match_the_zoo_spec_checksum_is_refused() {
    for zoo in [resnet50(), mobilenetv2(), efficientnet_lite4()] {
        let (shipped, text) = shipped(&zoo);
        let bytes = onnx_graph::encode_model(&stand_in(&shipped, &text, &zoo.real));
        let mut corrupted = bytes.clone();
        let middle = corrupted.len() / 2;
        corrupted[middle] ^= 0x01;
        let server = Server::start(vec![Reply::File(corrupted)]);
        let spec = served_at(&shipped, &server.base_url, &bytes);
        let cache = tempfile::tempdir().unwrap();

        let err = resolve_with_progress(&spec, cache.path(), &progress::Silent).unwrap_err();

        server.finish();
        assert!(matches!(err, ModelError::Mismatch { what: "SHA-256", .. }), "{}: {err:?}", zoo.file);
        let file: PathBuf = models::fetched_file(&spec, cache.path()).unwrap();
        let text = err.to_string();
        assert!(text.contains(&shipped.name) && text.contains(&file.display().to_string()), "{text}");
        assert!(!file.exists(), "{}: a wrong download was kept", zoo.file);
    }
}
