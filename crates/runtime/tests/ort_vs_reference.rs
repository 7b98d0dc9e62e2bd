//! ONNX Runtime, loaded through `runtime::init_ort`, against the naive Rust
//! reference in `onnx_graph::reference`, on generated tiny VGG models.
//!
//! These tests need the pinned library (`cargo xtask setup`, or
//! `ORT_DYLIB_PATH`); without it they fail and say so, rather than pass
//! having checked nothing.

use onnx_graph::reference::{self, Tensor};
use onnx_graph::vgg::{self, VggConfig};
use onnx_graph::{encode_model, ModelProto};
use ort::session::Session;
use runtime::{ModelSource, SessionOptions};
use sha2::{Digest, Sha256};

const SEED: u64 = 20240607;
/// ORT and the reference sum in different orders (and the reference in
/// f64); relative to the largest output, they must agree to this.
const RELATIVE_TOLERANCE: f32 = 1e-5;

fn environment() -> &'static runtime::Environment {
    runtime::init_ort().unwrap_or_else(|e| panic!("ONNX Runtime is needed for this test: {e}"))
}

fn session(model: &ModelProto) -> Session {
    environment();
    let options = SessionOptions::default().intra_threads(1);
    runtime::open_session(&options, ModelSource::Memory(&encode_model(model)))
        .unwrap_or_else(|e| panic!("ONNX Runtime refused the model: {e}"))
}

/// Runs `model` on one input and returns the named outputs.
fn run(model: &ModelProto, input: &Tensor, outputs: &[&str]) -> Vec<Tensor> {
    let mut session = session(model);
    let dims: Vec<i64> = input.dims.iter().map(|&d| d as i64).collect();
    let value = ort::value::Tensor::from_array((dims, input.data.clone())).unwrap();
    let results = session.run(ort::inputs![vgg::INPUT_NAME => value]).unwrap();
    outputs
        .iter()
        .map(|name| {
            let (shape, data) = results[*name].try_extract_tensor::<f32>().unwrap();
            Tensor::new(shape.iter().map(|&d| d as usize).collect(), data.to_vec())
        })
        .collect()
}

fn random_images(batch: usize, side: usize, seed: u64) -> Tensor {
    let mut rng = train_kit::SplitMix64::new(seed);
    let count = batch * 3 * side * side;
    Tensor::new(vec![batch, 3, side, side], rng.uniform_vec(-2.0, 2.0, count))
}

fn assert_close(actual: &Tensor, expected: &Tensor, what: &str) {
    assert_eq!(actual.dims, expected.dims, "{what}: shapes differ");
    let scale = expected.max_abs().max(1e-6);
    let diff = actual.max_abs_diff(expected);
    assert!(
        diff <= RELATIVE_TOLERANCE * scale,
        "{what}: max |diff| {diff} exceeds {RELATIVE_TOLERANCE} x max |value| {scale}"
    );
    assert!(scale > 1e-3, "{what}: outputs are all near zero, the check would be vacuous");
}

#[test]
fn the_pinned_library_is_set_up() {
    let library = runtime::ort_library().unwrap_or_else(|e| panic!("{e}"));
    if std::env::var_os(runtime::ORT_DYLIB_PATH).is_none() {
        let bytes = std::fs::read(&library).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), runtime::pinned::LIBRARY_SHA256);
    }
    // A second call hands back the same environment.
    assert!(std::ptr::eq(environment(), runtime::init_ort().unwrap()));
}

#[test]
fn tiny_vgg_in_ort_matches_the_reference() {
    let model = vgg::tiny_vgg(SEED);
    let images = random_images(3, 32, 1);

    let from_ort = run(&model, &images, &[vgg::OUTPUT_NAME]);
    let expected = reference::evaluate(&model, &[(vgg::INPUT_NAME, images)], &[vgg::OUTPUT_NAME]).unwrap();

    assert_eq!(from_ort[0].dims, [3, VggConfig::TINY.classifier[2] as usize]);
    assert_close(&from_ort[0], &expected[0], "logits");
}

#[test]
fn the_cut_model_gives_the_full_models_intermediate_output() {
    let full = vgg::tiny_vgg(SEED);
    let conv_base = onnx_graph::cut_at(&full, vgg::CONV_BASE_OUTPUT).unwrap();
    let images = random_images(2, 32, 2);

    // The full model, asked for its intermediate tensor as an extra output.
    let mut exposed = full.clone();
    onnx_graph::expose_output(&mut exposed, vgg::CONV_BASE_OUTPUT).unwrap();
    let from_full = run(&exposed, &images, &[vgg::CONV_BASE_OUTPUT, vgg::OUTPUT_NAME]);
    let from_cut = run(&conv_base, &images, &[vgg::CONV_BASE_OUTPUT]);

    let side = VggConfig::TINY.conv_base_size() as usize;
    assert_eq!(from_cut[0].dims, [2, 16, side, side]);
    assert_close(&from_cut[0], &from_full[0], "cut vs full model, in ORT");
    let expected = reference::evaluate(&full, &[(vgg::INPUT_NAME, images)], &[vgg::CONV_BASE_OUTPUT]).unwrap();
    assert_close(&from_cut[0], &expected[0], "cut model vs reference");
}

#[test]
fn freed_spatial_dims_accept_other_image_sizes() {
    let mut conv_base = onnx_graph::cut_at(&vgg::tiny_vgg(SEED), vgg::CONV_BASE_OUTPUT).unwrap();
    onnx_graph::free_input_dims(&mut conv_base, vgg::INPUT_NAME, &[(2, "height"), (3, "width")]).unwrap();
    let images = random_images(1, 64, 3);

    let from_ort = run(&conv_base, &images, &[vgg::CONV_BASE_OUTPUT]);
    let expected = reference::evaluate(&conv_base, &[(vgg::INPUT_NAME, images)], &[vgg::CONV_BASE_OUTPUT]).unwrap();

    assert_eq!(from_ort[0].dims, [1, 16, 2, 2]);
    assert_close(&from_ort[0], &expected[0], "64x64 conv base");
}
