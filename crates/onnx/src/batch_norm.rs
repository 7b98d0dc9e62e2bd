//! Batch normalisation with its running statistics held fixed, written out
//! as plain arithmetic for training graphs.
//!
//! ONNX Runtime's training build rewrites every `BatchNormalization` node of
//! a training graph into training mode (`BatchNormReplacement` →
//! `BatchNormInternal`, `training_mode = 1`): it then normalises with each
//! batch's own mean and variance, while the exported model keeps the file's
//! running statistics, which training never updates. Fine-tuning with small
//! batches that way changes the features under the head. The usual choice
//! (and Keras's for a fine-tuned base in inference mode) is to keep the
//! running statistics frozen. [`freeze_statistics`] replaces each node by
//!
//! ```text
//! a = scale / sqrt(var + epsilon)        b = bias - mean · a
//! y = x · reshape(a, [C, 1, …]) + reshape(b, [C, 1, …])
//! ```
//!
//! which is the same function, keeps the initializer names (so `scale` and
//! `bias` can still be chosen to train), and uses only ops whose gradients
//! the training build has (Add, Sub, Mul, Div, Sqrt, Reshape), all present
//! since opset 7.

use std::collections::BTreeSet;

use crate::proto::{GraphProto, ModelProto, NodeProto};
use crate::shape::{self, float_attribute, int_attribute};
use crate::{graph, graph_mut, tensor, GraphError};

/// The op this module rewrites.
pub const BATCH_NORMALIZATION: &str = "BatchNormalization";

/// The parameters of one `BatchNormalization` node, by role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchNormParams {
    /// The node's name (or its output's, when unnamed).
    pub node: String,
    /// Learned by gradient: γ and β.
    pub scale: String,
    pub bias: String,
    /// Statistics, never learned by gradient.
    pub mean: String,
    pub var: String,
}

/// Every `BatchNormalization` node's parameter names, in graph order.
pub fn batch_norm_params(model: &ModelProto) -> Result<Vec<BatchNormParams>, GraphError> {
    graph(model)?.node.iter().filter(|n| n.op_type == BATCH_NORMALIZATION).map(params_of).collect()
}

fn params_of(node: &NodeProto) -> Result<BatchNormParams, GraphError> {
    let [_, scale, bias, mean, var] = &node.input[..] else {
        return Err(GraphError::Invalid(format!(
            "BatchNormalization node {:?} has {} inputs, not 5",
            node.name,
            node.input.len()
        )));
    };
    let name = if node.name.is_empty() { node.output.first().cloned().unwrap_or_default() } else { node.name.clone() };
    Ok(BatchNormParams { node: name, scale: scale.clone(), bias: bias.clone(), mean: mean.clone(), var: var.clone() })
}

/// Rewrites every `BatchNormalization` node (see the module doc); returns
/// how many there were. The running mean and variance must be
/// initializers; every new tensor is named after the node.
pub fn freeze_statistics(model: &mut ModelProto) -> Result<usize, GraphError> {
    let graph = graph_mut(model)?;
    let ranks = input_ranks(graph);
    let mut taken: BTreeSet<String> = crate::tensor_names(graph).into_iter().map(str::to_owned).collect();
    let mut nodes = Vec::with_capacity(graph.node.len());
    let mut initializers = Vec::new();
    let mut count = 0;
    for node in std::mem::take(&mut graph.node) {
        if node.op_type != BATCH_NORMALIZATION {
            nodes.push(node);
            continue;
        }
        let p = params_of(&node)?;
        if node.output.len() != 1 {
            return Err(GraphError::Unsupported(format!(
                "BatchNormalization node {:?} is in training mode ({} outputs); only inference-form nodes are rewritten",
                p.node,
                node.output.len()
            )));
        }
        if int_attribute(&node, "training_mode") == Some(1) {
            return Err(GraphError::Unsupported(format!(
                "BatchNormalization node {:?} is in training mode (training_mode = 1)",
                p.node
            )));
        }
        let mean = graph
            .initializer
            .iter()
            .find(|t| t.name == p.mean)
            .ok_or_else(|| GraphError::UnknownInitializer(p.mean.clone()))?;
        // Opset-7 files from MXNet say `spatial = 0` over per-channel
        // statistics; ONNX Runtime normalises them per channel, and so does
        // this. Statistics per activation (more than one dim) are refused.
        if mean.dims.len() > 1 {
            return Err(GraphError::Unsupported(format!(
                "BatchNormalization node {:?}: statistics of shape {:?} (per activation, not per channel)",
                p.node, mean.dims
            )));
        }
        let channels = tensor::element_count(&mean.dims) as i64;
        let rank = ranks.get(&node.input[0]).copied().flatten().unwrap_or(4).max(2);
        let mut fresh = |suffix: &str| -> String {
            let mut name = format!("{}/frozen_bn/{suffix}", p.node);
            while !taken.insert(name.clone()) {
                name.push('_');
            }
            name
        };
        let (epsilon, shape) = (fresh("epsilon"), fresh("shape"));
        initializers.push(tensor::f32_tensor(&epsilon, &[], &[float_attribute(&node, "epsilon").unwrap_or(1e-5)]));
        // [C, 1, …, 1]: broadcasts against [N, C, …] from the right.
        let target: Vec<i64> = std::iter::once(channels).chain(std::iter::repeat_n(1, rank - 2)).collect();
        initializers.push(tensor::i64_tensor(&shape, &[target.len() as i64], &target));
        let op = |op_type: &str, suffix: &str, inputs: &[&str], output: String| NodeProto {
            name: format!("{}/frozen_bn/{suffix}", p.node),
            op_type: op_type.to_owned(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output],
            ..Default::default()
        };
        let [var_eps, std, a, mean_a, b, a_c, b_c, scaled] =
            ["var_eps", "std", "a", "mean_a", "b", "a_c", "b_c", "scaled"].map(&mut fresh);
        nodes.push(op("Add", "add_epsilon", &[&p.var, &epsilon], var_eps.clone()));
        nodes.push(op("Sqrt", "sqrt", &[&var_eps], std.clone()));
        nodes.push(op("Div", "div", &[&p.scale, &std], a.clone()));
        nodes.push(op("Mul", "mul_mean", &[&p.mean, &a], mean_a.clone()));
        nodes.push(op("Sub", "sub", &[&p.bias, &mean_a], b.clone()));
        nodes.push(op("Reshape", "reshape_a", &[&a, &shape], a_c.clone()));
        nodes.push(op("Reshape", "reshape_b", &[&b, &shape], b_c.clone()));
        nodes.push(op("Mul", "mul_x", &[&node.input[0], &a_c], scaled.clone()));
        nodes.push(op("Add", "add_b", &[&scaled, &b_c], node.output[0].clone()));
        count += 1;
    }
    graph.node = nodes;
    graph.initializer.extend(initializers);
    Ok(count)
}

/// The rank of every tensor whose rank shape inference or the graph tells.
fn input_ranks(graph: &GraphProto) -> std::collections::HashMap<String, Option<usize>> {
    let mut ranks: std::collections::HashMap<String, Option<usize>> =
        shape::infer(graph).into_iter().map(|(name, info)| (name, info.dims.map(|d| d.len()))).collect();
    for value in graph.input.iter().chain(&graph.value_info) {
        if let Some(rank) = shape::tensor_info(value).and_then(|i| i.dims).map(|d| d.len()) {
            ranks.insert(value.name.clone(), Some(rank));
        }
    }
    ranks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{ConvOptions, GraphBuilder};
    use crate::reference::{evaluate, Tensor};
    use crate::Dim;

    /// Conv → BN → Relu → BN on a `[N, 3, 4, 4]` image, seeded values; the
    /// second BN reads a 4-D tensor too, and shares no names with the first.
    fn conv_bn_model() -> ModelProto {
        let mut rng = train_kit::SplitMix64::new(11);
        let mut b = GraphBuilder::new("bn");
        let x = b.input("image", &[Dim::named("N"), Dim::Fixed(3), Dim::Fixed(4), Dim::Fixed(4)]);
        let w = b.initializer("conv.weight", &[5, 3, 3, 3], &rng.uniform_vec(-0.5, 0.5, 135));
        let conv = b.conv("conv", &x, &w, None, ConvOptions { kernel: [3, 3], pads: [1; 4], strides: [1, 1] });
        let mut params = |b: &mut GraphBuilder, prefix: &str| -> [String; 4] {
            let mut p = |suffix: &str, lo: f32, hi: f32| {
                b.initializer(&format!("{prefix}.{suffix}"), &[5], &rng.uniform_vec(lo, hi, 5))
            };
            [p("gamma", 0.5, 2.0), p("beta", -1.0, 1.0), p("running_mean", -0.5, 0.5), p("running_var", 0.1, 3.0)]
        };
        let p1 = params(&mut b, "bn1");
        let bn1 = b.batch_norm("bn1", &conv, [&p1[0], &p1[1], &p1[2], &p1[3]], 1e-3);
        let relu = b.relu("relu", &bn1);
        let p2 = params(&mut b, "bn2");
        let bn2 = b.batch_norm("bn2", &relu, [&p2[0], &p2[1], &p2[2], &p2[3]], 1e-5);
        let out = b.rename(&bn2, "features");
        b.output(&out, &[Dim::named("N"), Dim::Fixed(5), Dim::Fixed(4), Dim::Fixed(4)]);
        b.finish("test", &[])
    }

    #[test]
    fn the_rewritten_graph_computes_the_same_function() {
        let original = conv_bn_model();
        let mut frozen = original.clone();
        assert_eq!(freeze_statistics(&mut frozen).unwrap(), 2);
        let nodes = &graph(&frozen).unwrap().node;
        assert!(nodes.iter().all(|n| n.op_type != BATCH_NORMALIZATION));
        // Scale and bias are still initializers, used by the new nodes.
        for name in ["bn1.gamma", "bn1.beta", "bn2.gamma", "bn2.beta"] {
            assert!(nodes.iter().any(|n| n.input.iter().any(|i| i == name)), "{name} is unused");
        }
        let image = Tensor::new(vec![2, 3, 4, 4], train_kit::SplitMix64::new(3).uniform_vec(-2.0, 2.0, 96));
        let run = |model: &ModelProto| evaluate(model, &[("image", image.clone())], &["features"]).unwrap().remove(0);
        let (expected, actual) = (run(&original), run(&frozen));
        assert_eq!(actual.dims, [2, 5, 4, 4]);
        assert!(expected.max_abs() > 0.5, "a trivial output proves nothing");
        assert!(expected.max_abs_diff(&actual) < 1e-5, "{}", expected.max_abs_diff(&actual));
    }

    #[test]
    fn parameters_are_named_by_role() {
        let params = batch_norm_params(&conv_bn_model()).unwrap();
        assert_eq!(params.len(), 2);
        assert_eq!(
            params[1],
            BatchNormParams {
                node: "bn2".into(),
                scale: "bn2.gamma".into(),
                bias: "bn2.beta".into(),
                mean: "bn2.running_mean".into(),
                var: "bn2.running_var".into(),
            }
        );
    }

    #[test]
    fn training_mode_nodes_are_refused() {
        let mut model = conv_bn_model();
        graph_mut(&mut model).unwrap().node[1].output.push("saved_mean".into());
        let err = freeze_statistics(&mut model).unwrap_err().to_string();
        assert!(err.contains("bn1") && err.contains("training mode"), "{err}");
    }
}
