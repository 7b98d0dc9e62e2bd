//! A conv base whose graph pools itself (a backbone exported with global
//! pooling, `conv_base.shape = [C]`): its 2-D `[N, C]` output takes the
//! head directly, through the same `Flatten` a `[C, H, W]` map goes through.

use compose::{compose, ComposeOptions, DenseLayer, HeadInit, LOGITS, META_CONV_BASE_OUTPUT};
use onnx_graph::builder::int_attribute;
use onnx_graph::proto::{data_type, ModelProto, NodeProto};
use onnx_graph::reference::{self, Tensor};
use onnx_graph::shape::{tensor_value_info, Dim};
use onnx_graph::vgg;

/// The tiny conv base (16 channels, 1x1 at 32x32) followed by `ops`, one
/// input and one output each; the output is declared `[N, 16]`.
fn pooled_conv_base(ops: &[&str]) -> (ModelProto, String) {
    let mut model = onnx_graph::cut_at(&vgg::tiny_vgg(3), vgg::CONV_BASE_OUTPUT).unwrap();
    let graph = onnx_graph::graph_mut(&mut model).unwrap();
    let mut x = vgg::CONV_BASE_OUTPUT.to_owned();
    for op in ops {
        let output = format!("/pooled/{op}_output_0");
        let attribute = if *op == "Flatten" { vec![int_attribute("axis", 1)] } else { vec![] };
        let input = std::mem::replace(&mut x, output.clone());
        graph.node.push(NodeProto {
            name: format!("/pooled/{op}"),
            op_type: (*op).to_owned(),
            input: vec![input],
            output: vec![output],
            attribute,
            ..Default::default()
        });
    }
    graph.output = vec![tensor_value_info(&x, data_type::FLOAT, Some(&[Dim::named("N"), Dim::Fixed(16)]))];
    (model, x)
}

fn head(seed: u64) -> Vec<DenseLayer> {
    let mut rng = train_kit::SplitMix64::new(seed);
    vec![
        DenseLayer::new(rng.uniform_vec(-0.3, 0.3, 16 * 8), [16, 8], rng.uniform_vec(-0.1, 0.1, 8)),
        DenseLayer::new(rng.uniform_vec(-0.3, 0.3, 8 * 5), [8, 5], rng.uniform_vec(-0.1, 0.1, 5)),
    ]
}

#[test]
fn global_pooling_then_flatten_takes_the_head_as_it_is() {
    let (base, output) = pooled_conv_base(&["GlobalAveragePool", "Flatten"]);
    let composed = compose(&base, &HeadInit::Trained(head(4)), &ComposeOptions::default()).unwrap();
    let graph = onnx_graph::graph(&composed.training).unwrap();
    let ops: Vec<&str> = graph.node.iter().map(|n| n.op_type.as_str()).collect();
    // The head adds no pooling and no reshape: its Flatten of [N, 16] is [N, 16].
    assert!(ops.ends_with(&["GlobalAveragePool", "Flatten", "Flatten", "Gemm", "Relu", "Gemm"]), "{ops:?}");
    assert_eq!(onnx_graph::metadata(&composed.training, META_CONV_BASE_OUTPUT), Some(output.as_str()));
    let logits = onnx_graph::outputs(&composed.training).unwrap().remove(0);
    assert_eq!((logits.name.as_str(), logits.dims.unwrap()[1].clone()), (LOGITS, Dim::Fixed(5)));

    // The feature length is read off the 2-D output: 16, so a head for 32 is refused.
    let wide = vec![DenseLayer::new(vec![0.0; 32 * 2], [32, 2], vec![0.0; 2])];
    let err = compose(&base, &HeadInit::Trained(wide), &ComposeOptions::default()).unwrap_err();
    assert!(err.to_string().contains("the head takes 32 inputs but the conv base gives 16"), "{err}");
    // And a random head is sized from it.
    let random = HeadInit::Random { hidden: vec![], classes: 3, seed: 1 };
    let options = ComposeOptions { allow_random_head: true, ..Default::default() };
    let composed = compose(&base, &random, &options).unwrap();
    let weights = onnx_graph::initializers(&composed.training).unwrap();
    let dense0 = weights.iter().find(|t| t.name == "head.dense0.weight").unwrap();
    assert_eq!(dense0.dims, Some(vec![Dim::Fixed(16), Dim::Fixed(3)]));
}

#[test]
fn the_logits_of_a_2d_output_are_the_head_applied_to_it() {
    // The reference evaluator knows Flatten but not global pooling; a
    // Flatten alone gives the same [N, 16] output to compose on.
    let (base, output) = pooled_conv_base(&["Flatten"]);
    let layers = head(5);
    let composed = compose(&base, &HeadInit::Trained(layers.clone()), &ComposeOptions::default()).unwrap();
    let mut rng = train_kit::SplitMix64::new(6);
    let images = Tensor::new(vec![3, 3, 32, 32], rng.uniform_vec(-1.0, 1.0, 3 * 3 * 32 * 32));
    let feeds = [(vgg::INPUT_NAME, images)];
    let logits = reference::evaluate(&composed.training, &feeds, &[LOGITS]).unwrap().remove(0);
    let features = reference::evaluate(&base, &feeds, &[&output]).unwrap().remove(0);
    assert_eq!(features.dims, [3, 16]);
    let dense = |x: &Tensor, layer: &DenseLayer| {
        let w = Tensor::new(layer.dims.to_vec(), layer.weight.clone());
        let b = Tensor::new(vec![layer.outputs()], layer.bias.clone());
        reference::gemm(x, &w, Some(&b), 1.0, 1.0, false, false)
    };
    let expected = dense(&reference::relu(&dense(&features, &layers[0])), &layers[1]);
    assert_eq!(logits.dims, [3, 5]);
    assert!(expected.max_abs() > 1e-3, "not all near zero");
    assert!(logits.max_abs_diff(&expected) < 1e-6, "{}", logits.max_abs_diff(&expected));
}
