//! The head as an ONNX graph: embedding in, logits and probabilities out.
//! Fine-tuning composes it onto the conv base; stock ONNX Runtime runs it.

use onnx_graph::{Dim, GraphBuilder, ModelProto};

use crate::{Activation, TrainedHead};

/// Graph input: `[batch, embedding]` f32.
pub const INPUT: &str = "embedding";
/// Graph outputs: `[batch, classes]` f32.
pub const LOGITS: &str = "logits";
pub const PROBABILITIES: &str = "probabilities";

/// Builds the inference graph of a trained head (dropout is the identity at
/// inference, so it has no node). Weights keep the `[out, in]` layout, as a
/// `Gemm` with `transB = 1`; initializers are named `head.dense_{i}.weight`
/// and `head.dense_{i}.bias`, so they cannot clash with a conv base's.
pub fn to_onnx(head: &TrainedHead) -> ModelProto {
    let model = &head.model;
    let mut g = GraphBuilder::new("head");
    let mut x = g.input(INPUT, &[Dim::named("batch"), Dim::Fixed(model.input_dim() as i64)]);
    let last = model.layers().len() - 1;
    for (i, layer) in model.layers().iter().enumerate() {
        let (out, inp) = layer.weight.dim();
        let w = g.initializer(&format!("head.dense_{i}.weight"), &[out as i64, inp as i64], &contiguous(&layer.weight));
        let b = g.initializer(&format!("head.dense_{i}.bias"), &[out as i64], &layer.bias.to_vec());
        x = g.linear(&format!("head.dense_{i}"), &x, &w, &b);
        if i < last {
            x = match model.activation() {
                Activation::Relu => g.relu(&format!("head.relu_{i}"), &x),
                Activation::Tanh => g.node("Tanh", &format!("head.tanh_{i}"), &[&x], vec![]),
            };
        }
    }
    let logits = g.rename(&x, LOGITS);
    let probs = g.softmax("head.softmax", &logits, 1);
    g.rename(&probs, PROBABILITIES);
    let classes = Dim::Fixed(model.num_classes() as i64);
    g.output(LOGITS, &[Dim::named("batch"), classes.clone()]);
    g.output(PROBABILITIES, &[Dim::named("batch"), classes]);
    let class_names = serde_json::to_string(&head.meta.class_names).expect("strings serialise");
    g.finish(
        "tl-vision head",
        &[("class_names", class_names), ("config_fingerprint", head.meta.config_fingerprint.clone())],
    )
}

fn contiguous(a: &ndarray::Array2<f32>) -> Vec<f32> {
    a.as_standard_layout().iter().copied().collect()
}
