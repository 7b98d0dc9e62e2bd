//! One ONNX graph from image to probabilities: the conv base (from its ONNX
//! file), the pooling the features stage used (flatten, or global
//! average/max), and the head's dense layers with the trained head's
//! weights. The fine-tune stage trains the logits graph
//! ([`Composed::training`]); the head stage writes [`Composed::inference`]
//! as `model.onnx` ([`inference_model`]), so every run can predict.
//!
//! Pure: graphs in, graphs out; no I/O, no runtime.

use std::collections::BTreeSet;

use contracts::head::Activation;
use onnx_graph::builder::{float_attribute, int_attribute};
use onnx_graph::proto::{data_type, GraphProto, ModelProto, NodeProto};
use onnx_graph::shape::{self, Dim};
use onnx_graph::{graph, graph_mut, set_metadata, tensor};
use spec::{Layout, Pooling};

/// Why a conv base and a head do not make one graph.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error(
        "refusing to fine-tune from a random head: a random head's large gradients would wreck the \
         pretrained features. Train the head on cached features first (the head stage) and pass its \
         weights, or set allow_random_head (--allow-random-head) if you really mean it"
    )]
    RandomHeadRefused,
    #[error("graph: {0}")]
    Graph(#[from] onnx_graph::GraphError),
    #[error("the conv base has {count} outputs; say which one ends the conv base")]
    BaseOutputs { count: usize },
    #[error("the conv base must have exactly one input (the image); it has {names:?}")]
    ImageInputs { names: Vec<String> },
    #[error("the image input {input:?} has no known rank")]
    UnknownRank { input: String },
    #[error("the image input {input:?} has rank {rank}, not 4")]
    Rank { input: String, rank: usize },
    #[error("the image input {input:?} has size {fixed} on axis {axis}, the spec says {size}")]
    ImageSize { input: String, axis: usize, fixed: i64, size: u32 },
    #[error(
        "the image input {input:?} has dims [{dims}]; training needs fixed channel and spatial dims \
         (ONNX Runtime 1.19's training session crashes on symbolic height and width): \
         set ComposeOptions::input_size (the model spec's input.size)"
    )]
    SymbolicImage { input: String, dims: String },
    #[error("head weights: weight has {values} values, not {outputs} x {inputs} = {}", outputs * inputs)]
    WeightCount { values: usize, outputs: usize, inputs: usize },
    #[error(
        "head weights: cannot size a random head: the conv base's output shape is not known; give \
         ComposeOptions::feature_len"
    )]
    Unsized,
    #[error("head weights: the head has no layers")]
    NoLayers,
    #[error("head weights: layer {layer} has dims {dims:?}")]
    ZeroDims { layer: usize, dims: [usize; 2] },
    #[error("head weights: layer {layer} is [{inputs}, {outputs}] but has {weights} weights and {biases} biases")]
    Sizes { layer: usize, inputs: usize, outputs: usize, weights: usize, biases: usize },
    #[error("head weights: layer {layer} holds NaN or infinite values")]
    NonFinite { layer: usize },
    #[error("head weights: layer {} has {previous_outputs} outputs but layer {layer} takes {inputs} inputs", layer - 1)]
    Chain { layer: usize, previous_outputs: usize, inputs: usize },
    #[error(
        "head weights: the head takes {head_inputs} inputs but the conv base gives {features} features (after \
         pooling); was the head trained on another model, pooling or input size?"
    )]
    FeatureLen { head_inputs: usize, features: usize },
}

type Result<T, E = ComposeError> = std::result::Result<T, E>;

/// The composed graph's output: class scores before softmax.
pub const LOGITS: &str = "logits";
/// The inference graph's output: class probabilities (softmax of the logits).
pub const PROBABILITIES: &str = "probabilities";
/// Prefix of the head's parameter names in the composed graph
/// (`head.dense0.weight`, `head.dense0.bias`, ...).
pub const HEAD_PREFIX: &str = "head.";
/// Metadata keys the composed graph carries.
pub const META_HEAD_INIT: &str = "finetune.head_init";
pub const META_CONV_BASE_OUTPUT: &str = "finetune.conv_base_output";
pub const META_POOLING: &str = "finetune.pooling";

/// One dense layer of the head: `y = x · W + b`, with `W` stored row-major
/// as `[inputs, outputs]` (the Keras layout; see [`DenseLayer::from_out_in`]
/// for the PyTorch/`head` crate layout). [`ComposeOptions::activation`]
/// follows every layer but the last.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseLayer {
    /// `inputs * outputs` values, row-major `[inputs, outputs]`.
    pub weight: Vec<f32>,
    /// `[inputs, outputs]`.
    pub dims: [usize; 2],
    /// `outputs` values.
    pub bias: Vec<f32>,
}

impl DenseLayer {
    /// A layer from a `[inputs, outputs]` weight.
    pub fn new(weight: Vec<f32>, dims: [usize; 2], bias: Vec<f32>) -> DenseLayer {
        DenseLayer { weight, dims, bias }
    }

    /// A layer from a `[outputs, inputs]` weight (PyTorch `Linear`, the
    /// `head` crate's `Dense`), transposed into this layout.
    pub fn from_out_in(weight: &[f32], outputs: usize, inputs: usize, bias: Vec<f32>) -> Result<DenseLayer> {
        if weight.len() != outputs * inputs {
            return Err(ComposeError::WeightCount { values: weight.len(), outputs, inputs });
        }
        let mut transposed = vec![0.0; weight.len()];
        for o in 0..outputs {
            for i in 0..inputs {
                transposed[i * outputs + o] = weight[o * inputs + i];
            }
        }
        Ok(DenseLayer { weight: transposed, dims: [inputs, outputs], bias })
    }

    /// The head stage's layers (`head.safetensors`, `[outputs, inputs]`
    /// weights) in this layout.
    pub fn from_head(layers: &[contracts::head::DenseWeights]) -> Result<Vec<DenseLayer>> {
        layers.iter().map(|l| DenseLayer::from_out_in(&l.weight, l.outputs, l.inputs, l.bias.clone())).collect()
    }

    pub fn inputs(&self) -> usize {
        self.dims[0]
    }

    pub fn outputs(&self) -> usize {
        self.dims[1]
    }
}

/// Where the head's starting weights come from.
#[derive(Clone, Debug, PartialEq)]
pub enum HeadInit {
    /// The trained head's layers, in order (the normal case).
    Trained(Vec<DenseLayer>),
    /// Seeded random layers (He-uniform weights, zero biases). Refused
    /// unless [`ComposeOptions::allow_random_head`] is set: fine-tuning from
    /// a random head wrecks the pretrained features.
    Random { hidden: Vec<usize>, classes: usize, seed: u64 },
}

/// How to compose.
#[derive(Clone, Debug, PartialEq)]
pub struct ComposeOptions {
    /// The tensor where the conv base ends; `None`: the graph's only output.
    /// If the graph goes on past it (a full model), it is cut there.
    pub conv_base_output: Option<String>,
    /// The pooling the features stage applied before the head (the model
    /// spec's `conv_base.pooling`).
    pub pooling: Pooling,
    /// The length of the head's input (the model spec's `embedding_len()`);
    /// checked against the head when given, needed for a random head when
    /// the conv base's output shape cannot be inferred.
    pub feature_len: Option<usize>,
    /// Fixes the image input's spatial dims to `[width, height]` (the model
    /// spec's `input.size`), on the axes `input_layout` says. The training
    /// graphs need fixed spatial dims: ONNX Runtime 1.19's training session
    /// crashes (SIGSEGV in `train_step`) when height and width are symbolic.
    pub input_size: Option<[u32; 2]>,
    pub input_layout: Layout,
    /// What follows every dense layer but the last (the head's `activation`).
    pub activation: Activation,
    /// Allows [`HeadInit::Random`].
    pub allow_random_head: bool,
}

impl Default for ComposeOptions {
    fn default() -> Self {
        ComposeOptions {
            conv_base_output: None,
            pooling: Pooling::Flatten,
            feature_len: None,
            input_size: None,
            input_layout: Layout::Nchw,
            activation: Activation::Relu,
            allow_random_head: false,
        }
    }
}

impl ComposeOptions {
    /// The options a model spec implies: its conv base output, pooling,
    /// embedding length and input size and layout.
    pub fn from_spec(spec: &spec::ModelSpec) -> ComposeOptions {
        ComposeOptions {
            conv_base_output: Some(spec.conv_base.output.clone()),
            pooling: spec.conv_base.pooling,
            feature_len: Some(spec.embedding_len()),
            input_size: Some(spec.input.size),
            input_layout: spec.input.layout,
            activation: Activation::Relu,
            allow_random_head: false,
        }
    }
}

/// The composed graphs.
#[derive(Clone, Debug)]
pub struct Composed {
    /// Image in, [`LOGITS`] out: what the training artifacts are made from.
    pub training: ModelProto,
    /// Image in, [`PROBABILITIES`] out.
    pub inference: ModelProto,
    /// The graph's image input.
    pub image_input: String,
    /// The head's parameter names (always trainable).
    pub head_params: Vec<String>,
    pub classes: usize,
}

/// Composes conv base + pooling + head into one graph (see the module doc).
pub fn compose(conv_base: &ModelProto, head: &HeadInit, options: &ComposeOptions) -> Result<Composed> {
    let outputs = onnx_graph::outputs(conv_base)?;
    let base_output = match &options.conv_base_output {
        Some(name) => name.clone(),
        None if outputs.len() == 1 => outputs[0].name.clone(),
        None => return Err(ComposeError::BaseOutputs { count: outputs.len() }),
    };
    let mut model = if outputs.len() == 1 && outputs[0].name == base_output {
        conv_base.clone()
    } else {
        onnx_graph::cut_at(conv_base, &base_output)?
    };
    let inputs = onnx_graph::inputs(&model)?;
    let [image] = inputs.as_slice() else {
        return Err(ComposeError::ImageInputs { names: inputs.iter().map(|i| i.name.clone()).collect() });
    };
    let image_input = image.name.clone();
    let batch_dim = image.dims.as_ref().and_then(|d| d.first().cloned()).unwrap_or(Dim::Unknown);
    fix_spatial_dims(&mut model, &image_input, options)?;

    let inferred_len = pooled_feature_len(graph(&model)?, &base_output, options.pooling);
    let expected_len = options.feature_len.or(inferred_len);
    let layers = head_layers(head, options, expected_len)?;
    check_layers(&layers, expected_len)?;
    let classes = layers.last().ok_or(ComposeError::NoLayers)?.outputs();

    let head_params = append_head(graph_mut(&mut model)?, &base_output, options, &layers)?;
    let graph = graph_mut(&mut model)?;
    graph.output = vec![shape::tensor_value_info(
        LOGITS,
        data_type::FLOAT,
        Some(&[batch_dim.clone(), Dim::Fixed(classes as i64)]),
    )];
    let head_note = match head {
        HeadInit::Trained(_) => "trained".to_owned(),
        HeadInit::Random { seed, .. } => format!("random: seeded He-uniform (seed {seed}), not trained"),
    };
    set_metadata(&mut model, META_HEAD_INIT, head_note);
    set_metadata(&mut model, META_CONV_BASE_OUTPUT, base_output.as_str());
    set_metadata(&mut model, META_POOLING, format!("{:?}", options.pooling).to_lowercase());

    let mut inference = model.clone();
    append_softmax(&mut inference, LOGITS, PROBABILITIES)?;
    Ok(Composed { training: model, inference, image_input, head_params, classes })
}

/// Appends `Softmax(axis = 1)` to `from` and makes `to` the only graph
/// output (used for the composed inference graph and the exported model).
pub fn append_softmax(model: &mut ModelProto, from: &str, to: &str) -> Result<()> {
    let graph = graph_mut(model)?;
    let names = onnx_graph::tensor_names(graph);
    if !names.contains(from) {
        return Err(onnx_graph::GraphError::UnknownTensor(from.to_owned()).into());
    }
    if names.contains(to) {
        return Err(onnx_graph::GraphError::DuplicateName(to.to_owned()).into());
    }
    let dims = graph
        .output
        .iter()
        .find(|o| o.name == from)
        .and_then(shape::tensor_info)
        .and_then(|info| info.dims)
        .unwrap_or_else(|| vec![Dim::Unknown, Dim::Unknown]);
    graph.node.push(NodeProto {
        name: "/head/Softmax".to_owned(),
        op_type: "Softmax".to_owned(),
        input: vec![from.to_owned()],
        output: vec![to.to_owned()],
        attribute: vec![int_attribute("axis", 1)],
        ..Default::default()
    });
    graph.output = vec![shape::tensor_value_info(to, data_type::FLOAT, Some(&dims))];
    Ok(())
}

/// The model users get: `inference` (image in, [`PROBABILITIES`] out) with
/// `metadata` (the [`spec::InferenceMetadata`] properties `predict` reads)
/// and the output note added, `producer` recorded, and only the opset
/// imports its nodes use (training graphs import many domains).
pub fn inference_model(mut model: ModelProto, metadata: &[(String, String)], producer: &str) -> Result<ModelProto> {
    set_metadata(&mut model, spec::META_OUTPUT, spec::OUTPUT_PROBABILITIES);
    for (key, value) in metadata {
        set_metadata(&mut model, key, value.as_str());
    }
    model.producer_name = producer.to_owned();
    model.producer_version = env!("CARGO_PKG_VERSION").to_owned();
    let used: BTreeSet<String> = graph(&model)?.node.iter().map(|n| n.domain.clone()).collect();
    model.opset_import.retain(|o| o.domain.is_empty() || o.domain == "ai.onnx" || used.contains(&o.domain));
    Ok(model)
}

fn head_layers(head: &HeadInit, options: &ComposeOptions, feature_len: Option<usize>) -> Result<Vec<DenseLayer>> {
    match head {
        HeadInit::Trained(layers) => Ok(layers.clone()),
        HeadInit::Random { .. } if !options.allow_random_head => Err(ComposeError::RandomHeadRefused),
        HeadInit::Random { hidden, classes, seed } => {
            let mut inputs = feature_len.ok_or(ComposeError::Unsized)?;
            let mut layers = Vec::new();
            for (index, &outputs) in hidden.iter().chain(std::iter::once(classes)).enumerate() {
                let name = format!("{HEAD_PREFIX}dense{index}.weight");
                let weight = train_kit::SplitMix64::for_tensor(*seed, &name).he_uniform(inputs, inputs * outputs);
                layers.push(DenseLayer::new(weight, [inputs, outputs], vec![0.0; outputs]));
                inputs = outputs;
            }
            Ok(layers)
        }
    }
}

fn check_layers(layers: &[DenseLayer], feature_len: Option<usize>) -> Result<()> {
    if layers.is_empty() {
        return Err(ComposeError::NoLayers);
    }
    for (index, layer) in layers.iter().enumerate() {
        let [inputs, outputs] = layer.dims;
        if inputs == 0 || outputs == 0 {
            return Err(ComposeError::ZeroDims { layer: index, dims: layer.dims });
        }
        if layer.weight.len() != inputs * outputs || layer.bias.len() != outputs {
            let (weights, biases) = (layer.weight.len(), layer.bias.len());
            return Err(ComposeError::Sizes { layer: index, inputs, outputs, weights, biases });
        }
        if layer.weight.iter().chain(&layer.bias).any(|v| !v.is_finite()) {
            return Err(ComposeError::NonFinite { layer: index });
        }
        if let Some(previous) = index.checked_sub(1).map(|i| &layers[i]) {
            if previous.outputs() != inputs {
                return Err(ComposeError::Chain { layer: index, previous_outputs: previous.outputs(), inputs });
            }
        }
    }
    if let Some(expected) = feature_len {
        if layers[0].inputs() != expected {
            return Err(ComposeError::FeatureLen { head_inputs: layers[0].inputs(), features: expected });
        }
    }
    Ok(())
}

/// Sets the image input's spatial dims from `options.input_size`, then
/// checks that every dim but the batch is fixed.
fn fix_spatial_dims(model: &mut ModelProto, input: &str, options: &ComposeOptions) -> Result<()> {
    let graph = graph_mut(model)?;
    let value_info = graph
        .input
        .iter_mut()
        .find(|v| v.name == input)
        .ok_or_else(|| onnx_graph::GraphError::UnknownTensor(input.to_owned()))?;
    let mut dims = shape::tensor_info(value_info)
        .and_then(|info| info.dims)
        .ok_or_else(|| ComposeError::UnknownRank { input: input.to_owned() })?;
    if dims.len() != 4 {
        return Err(ComposeError::Rank { input: input.to_owned(), rank: dims.len() });
    }
    if let Some([width, height]) = options.input_size {
        let (h_axis, w_axis) = match options.input_layout {
            Layout::Nchw => (2, 3),
            Layout::Nhwc => (1, 2),
        };
        for (axis, size) in [(h_axis, height), (w_axis, width)] {
            match &dims[axis] {
                Dim::Fixed(fixed) if *fixed != i64::from(size) => {
                    return Err(ComposeError::ImageSize { input: input.to_owned(), axis, fixed: *fixed, size })
                }
                _ => dims[axis] = Dim::Fixed(i64::from(size)),
            }
        }
        shape::set_dims(value_info, Some(&dims));
    }
    if dims.iter().skip(1).any(|d| d.fixed().is_none()) {
        let shown: Vec<String> = dims.iter().map(ToString::to_string).collect();
        return Err(ComposeError::SymbolicImage { input: input.to_owned(), dims: shown.join(", ") });
    }
    Ok(())
}

/// The feature length after pooling, when the conv base's output dims are
/// fixed.
fn pooled_feature_len(graph: &GraphProto, output: &str, pooling: Pooling) -> Option<usize> {
    let fixed = |dims: Option<Vec<Dim>>| -> Option<Vec<i64>> { dims?.iter().skip(1).map(Dim::fixed).collect() };
    let declared = graph.output.iter().find(|o| o.name == output).and_then(shape::tensor_info);
    let fixed = fixed(declared.and_then(|i| i.dims)).or_else(|| fixed(shape::infer(graph).remove(output)?.dims))?;
    match pooling {
        Pooling::Flatten => Some(fixed.iter().product::<i64>() as usize),
        Pooling::Avg | Pooling::Max => fixed.first().map(|&c| c as usize),
    }
}

/// Appends pooling, flatten and the dense layers after `input`; returns the
/// head's parameter names. The last layer's output is [`LOGITS`].
fn append_head(
    graph: &mut GraphProto,
    input: &str,
    options: &ComposeOptions,
    layers: &[DenseLayer],
) -> Result<Vec<String>> {
    let existing = onnx_graph::tensor_names(graph);
    let mut added: Vec<String> = Vec::new();
    let mut nodes: Vec<NodeProto> = Vec::new();
    let mut node = |op: &str, name: &str, inputs: &[&str], output: String, attribute| {
        nodes.push(NodeProto {
            name: name.to_owned(),
            op_type: op.to_owned(),
            input: inputs.iter().map(|s| (*s).to_owned()).collect(),
            output: vec![output.clone()],
            attribute,
            ..Default::default()
        });
        output
    };

    let mut x = input.to_owned();
    let pool = match options.pooling {
        Pooling::Flatten => None,
        Pooling::Avg => Some("GlobalAveragePool"),
        Pooling::Max => Some("GlobalMaxPool"),
    };
    if let Some(op) = pool {
        x = node(op, "/head/Pool", &[&x], "/head/Pool_output_0".into(), vec![]);
    }
    x = node("Flatten", "/head/Flatten", &[&x], "/head/Flatten_output_0".into(), vec![int_attribute("axis", 1)]);

    let mut params = Vec::new();
    let mut initializers = Vec::new();
    for (index, layer) in layers.iter().enumerate() {
        let last = index + 1 == layers.len();
        let weight = format!("{HEAD_PREFIX}dense{index}.weight");
        let bias = format!("{HEAD_PREFIX}dense{index}.bias");
        let [inputs, outputs] = layer.dims;
        initializers.push(tensor::f32_tensor(&weight, &[inputs as i64, outputs as i64], &layer.weight));
        initializers.push(tensor::f32_tensor(&bias, &[outputs as i64], &layer.bias));
        let gemm_out = if last { LOGITS.to_owned() } else { format!("/head/dense{index}/Gemm_output_0") };
        let attributes = vec![float_attribute("alpha", 1.0), float_attribute("beta", 1.0)];
        x = node("Gemm", &format!("/head/dense{index}/Gemm"), &[&x, &weight, &bias], gemm_out, attributes);
        if !last {
            let op = match options.activation {
                Activation::Relu => "Relu",
                Activation::Tanh => "Tanh",
            };
            x = node(
                op,
                &format!("/head/dense{index}/{op}"),
                &[&x],
                format!("/head/dense{index}/{op}_output_0"),
                vec![],
            );
        }
        params.push(weight);
        params.push(bias);
    }
    added.extend(nodes.iter().flat_map(|n| n.output.iter().cloned()));
    added.extend(params.iter().cloned());
    if let Some(clash) = added.iter().find(|name| existing.contains(name.as_str())) {
        return Err(onnx_graph::GraphError::DuplicateName(clash.clone()).into());
    }
    graph.node.extend(nodes);
    graph.initializer.extend(initializers);
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_graph::reference::{self, Tensor};
    use onnx_graph::vgg;

    fn conv_base() -> ModelProto {
        onnx_graph::cut_at(&vgg::tiny_vgg(3), vgg::CONV_BASE_OUTPUT).unwrap()
    }

    fn head(seed: u64) -> Vec<DenseLayer> {
        let mut rng = train_kit::SplitMix64::new(seed);
        vec![
            DenseLayer::new(rng.uniform_vec(-0.3, 0.3, 16 * 8), [16, 8], rng.uniform_vec(-0.1, 0.1, 8)),
            DenseLayer::new(rng.uniform_vec(-0.3, 0.3, 8 * 5), [8, 5], rng.uniform_vec(-0.1, 0.1, 5)),
        ]
    }

    #[test]
    fn composed_graph_is_conv_base_then_head() {
        let layers = head(1);
        let composed = compose(&conv_base(), &HeadInit::Trained(layers.clone()), &ComposeOptions::default()).unwrap();
        assert_eq!(composed.classes, 5);
        assert_eq!(composed.image_input, vgg::INPUT_NAME);
        assert_eq!(
            composed.head_params,
            ["head.dense0.weight", "head.dense0.bias", "head.dense1.weight", "head.dense1.bias"]
        );

        let mut rng = train_kit::SplitMix64::new(9);
        let images = Tensor::new(vec![2, 3, 32, 32], rng.uniform_vec(-1.0, 1.0, 2 * 3 * 32 * 32));
        let feeds = [(vgg::INPUT_NAME, images.clone())];
        let logits = reference::evaluate(&composed.training, &feeds, &[LOGITS]).unwrap().remove(0);
        let probabilities = reference::evaluate(&composed.inference, &feeds, &[PROBABILITIES]).unwrap().remove(0);

        // By hand: features from the conv base, then the two layers.
        let features = reference::evaluate(&conv_base(), &feeds, &[vgg::CONV_BASE_OUTPUT]).unwrap().remove(0);
        let x = reference::flatten(&features, 1);
        let w0 = Tensor::new(vec![16, 8], layers[0].weight.clone());
        let b0 = Tensor::new(vec![8], layers[0].bias.clone());
        let h = reference::relu(&reference::gemm(&x, &w0, Some(&b0), 1.0, 1.0, false, false));
        let w1 = Tensor::new(vec![8, 5], layers[1].weight.clone());
        let b1 = Tensor::new(vec![5], layers[1].bias.clone());
        let expected = reference::gemm(&h, &w1, Some(&b1), 1.0, 1.0, false, false);
        assert_eq!(logits.dims, [2, 5]);
        assert!(logits.max_abs_diff(&expected) < 1e-6);
        assert!(probabilities.max_abs_diff(&reference::softmax(&expected)) < 1e-6);
    }

    #[test]
    fn a_random_head_is_refused_unless_allowed() {
        let random = HeadInit::Random { hidden: vec![8], classes: 3, seed: 5 };
        let err = compose(&conv_base(), &random, &ComposeOptions::default()).unwrap_err();
        assert!(matches!(err, ComposeError::RandomHeadRefused), "{err}");
        let options = ComposeOptions { allow_random_head: true, ..Default::default() };
        let composed = compose(&conv_base(), &random, &options).unwrap();
        assert_eq!(composed.classes, 3);
        let note = onnx_graph::metadata(&composed.training, META_HEAD_INIT).unwrap();
        assert!(note.starts_with("random"), "{note}");
        // Seeded: the same seed gives the same weights.
        let again = compose(&conv_base(), &random, &options).unwrap();
        assert_eq!(
            onnx_graph::initializer_f32(&composed.training, "head.dense0.weight").unwrap(),
            onnx_graph::initializer_f32(&again.training, "head.dense0.weight").unwrap()
        );
    }

    #[test]
    fn mismatched_heads_are_reported() {
        let mut layers = head(1);
        layers[1].dims = [7, 5];
        layers[1].weight = vec![0.0; 35];
        let err = compose(&conv_base(), &HeadInit::Trained(layers), &ComposeOptions::default()).unwrap_err();
        assert!(err.to_string().contains("layer 0 has 8 outputs but layer 1 takes 7"), "{err}");

        let wide = vec![DenseLayer::new(vec![0.0; 32 * 2], [32, 2], vec![0.0; 2])];
        let err = compose(&conv_base(), &HeadInit::Trained(wide), &ComposeOptions::default()).unwrap_err();
        assert!(err.to_string().contains("the head takes 32 inputs but the conv base gives 16"), "{err}");
    }

    #[test]
    fn a_full_model_is_cut_and_pooling_is_applied() {
        let options = ComposeOptions {
            conv_base_output: Some(vgg::CONV_BASE_OUTPUT.into()),
            pooling: Pooling::Avg,
            ..Default::default()
        };
        // Global pooling of [N, 16, 1, 1] keeps 16 features.
        let composed = compose(&vgg::tiny_vgg(3), &HeadInit::Trained(head(2)), &options).unwrap();
        let ops: Vec<&str> = graph(&composed.training).unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.ends_with(&["GlobalAveragePool", "Flatten", "Gemm", "Relu", "Gemm"]), "{ops:?}");
        assert!(onnx_graph::initializers(&composed.training)
            .unwrap()
            .iter()
            .all(|t| !t.name.starts_with("classifier")));
    }

    #[test]
    fn spatial_dims_are_fixed_from_the_spec_or_the_graph_is_refused() {
        let mut free = conv_base();
        onnx_graph::free_input_dims(&mut free, vgg::INPUT_NAME, &[(2, "height"), (3, "width")]).unwrap();
        let err = compose(&free, &HeadInit::Trained(head(1)), &ComposeOptions::default()).unwrap_err();
        assert!(err.to_string().contains("symbolic height and width"), "{err}");

        let options = ComposeOptions { input_size: Some([32, 32]), ..Default::default() };
        let composed = compose(&free, &HeadInit::Trained(head(1)), &options).unwrap();
        let dims = onnx_graph::inputs(&composed.training).unwrap().remove(0).dims.unwrap();
        assert_eq!(dims[1..], [Dim::Fixed(3), Dim::Fixed(32), Dim::Fixed(32)]);

        let wrong = ComposeOptions { input_size: Some([64, 64]), ..Default::default() };
        assert!(compose(&conv_base(), &HeadInit::Trained(head(1)), &wrong).is_err());
    }

    #[test]
    fn a_tanh_head_gets_tanh_between_its_layers() {
        let layers = head(4);
        let options = ComposeOptions { activation: Activation::Tanh, ..Default::default() };
        let composed = compose(&conv_base(), &HeadInit::Trained(layers.clone()), &options).unwrap();
        let ops: Vec<&str> = graph(&composed.training).unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.ends_with(&["Flatten", "Gemm", "Tanh", "Gemm"]), "{ops:?}");
        // The reference evaluator knows no Tanh: check by hand from the hidden layer.
        let mut rng = train_kit::SplitMix64::new(5);
        let images = Tensor::new(vec![1, 3, 32, 32], rng.uniform_vec(-1.0, 1.0, 3 * 32 * 32));
        let feeds = [(vgg::INPUT_NAME, images)];
        let hidden =
            reference::evaluate(&composed.training, &feeds, &["/head/dense0/Gemm_output_0"]).unwrap().remove(0);
        let activated = Tensor::new(hidden.dims.clone(), hidden.data.iter().map(|v| v.tanh()).collect());
        let w1 = Tensor::new(vec![8, 5], layers[1].weight.clone());
        let b1 = Tensor::new(vec![5], layers[1].bias.clone());
        let expected = reference::gemm(&activated, &w1, Some(&b1), 1.0, 1.0, false, false);
        let mut model = composed.training.clone();
        // Feed the hidden layer's tanh to the last Gemm through the graph's own nodes.
        let nodes = &mut graph_mut(&mut model).unwrap().node;
        nodes.retain(|n| n.op_type != "Tanh");
        let last = nodes.last_mut().unwrap();
        last.input[0] = "tanh_by_hand".into();
        let feeds = [(vgg::INPUT_NAME, feeds[0].1.clone()), ("tanh_by_hand", activated)];
        let logits = reference::evaluate(&model, &feeds, &[LOGITS]).unwrap().remove(0);
        assert!(logits.max_abs_diff(&expected) < 1e-6);
    }

    #[test]
    fn the_inference_model_carries_its_metadata_and_only_used_opsets() {
        let composed = compose(&conv_base(), &HeadInit::Trained(head(1)), &ComposeOptions::default()).unwrap();
        let mut inference = composed.inference;
        inference
            .opset_import
            .push(onnx_graph::proto::OperatorSetIdProto { domain: "com.microsoft".into(), version: 1 });
        let props = vec![("class_names".to_owned(), r#"["a","b","c","d","e"]"#.to_owned())];
        let model = inference_model(inference, &props, "test producer").unwrap();
        assert_eq!(onnx_graph::metadata(&model, "class_names").unwrap(), r#"["a","b","c","d","e"]"#);
        assert_eq!(onnx_graph::metadata(&model, spec::META_OUTPUT).unwrap(), spec::OUTPUT_PROBABILITIES);
        assert_eq!(model.producer_name, "test producer");
        assert!(model.opset_import.iter().all(|o| o.domain.is_empty()), "{:?}", model.opset_import);
    }

    #[test]
    fn from_out_in_transposes() {
        let layer = DenseLayer::from_out_in(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3, vec![0.0; 2]).unwrap();
        assert_eq!(layer.dims, [3, 2]);
        assert_eq!(layer.weight, [1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    mod pooled_base {
        //! A conv base whose graph pools itself (a backbone exported with global
        //! pooling, `conv_base.shape = [C]`): its 2-D `[N, C]` output takes the
        //! head directly, through the same `Flatten` a `[C, H, W]` map goes through.

        use super::*;
        use onnx_graph::shape::tensor_value_info;

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
    }
}
