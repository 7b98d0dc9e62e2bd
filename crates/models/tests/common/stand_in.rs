//! Small generated stand-ins for model files that cannot be downloaded here.
//!
//! A stand-in has what a model spec relies on, with the real file's names:
//! the input (name, layout, size, batch fixed or free), each block's `input`
//! tensor and `params` initializers (used between that input and the conv
//! base output), the conv base output with the spec's shape, and a
//! classifier tail after it (global pool, dense to 1000, softmax if the real
//! file has one) so that cutting removes something. Between those, cheap
//! ops on 8 channels: strided 1x1 convs, BatchNormalization, Relu, Mul/Add.
//! The weights are a fixed pattern, not trained.

use onnx_graph::builder::{float_attribute, ints_attribute, ConvOptions, GraphBuilder};
use onnx_graph::proto::data_type;
use onnx_graph::shape::tensor_value_info;
use onnx_graph::{Dim, ModelProto};
use spec::{Block, Layout, ModelSpec};

/// Channels between the stem and the conv base's last conv.
const WIDTH: i64 = 8;
/// The real backbones' total stride: 224x224 in, 7x7 out.
const TOTAL_STRIDE: i64 = 32;
/// What the real file's classifier predicts.
const CLASSES: i64 = 1000;

/// What the real file has that its spec does not say.
#[derive(Clone, Debug)]
pub struct RealFile {
    /// The input's batch dim: `Dim::Fixed(1)` where the file fixes it.
    pub batch: Dim,
    /// The graph output's name.
    pub output: &'static str,
    /// Whether the classifier ends in a Softmax (else it gives scores).
    pub softmax: bool,
}

/// `conv_base.shape` as written in the spec, whatever its Rust type.
pub fn conv_base_shape(spec: &ModelSpec) -> Vec<usize> {
    let value = serde_json::to_value(&spec.conv_base).unwrap();
    serde_json::from_value(value["shape"].clone()).unwrap()
}

/// The spec's blocks in the order the spec file lists them (the map sorts
/// them by name), which is their order in the network.
pub fn blocks_in_file_order<'s>(spec: &'s ModelSpec, spec_text: &str) -> Vec<(&'s String, &'s Block)> {
    let mut blocks: Vec<_> = spec.blocks.iter().collect();
    blocks.sort_by_key(|(name, _)| {
        spec_text.find(&format!("[blocks.{name}]")).unwrap_or_else(|| panic!("no [blocks.{name}] in the spec text"))
    });
    blocks
}

/// The input's dims for `spec` with the given batch dim.
pub fn input_dims(spec: &ModelSpec, batch: Dim) -> Vec<Dim> {
    let [width, height] = spec.input.size.map(i64::from);
    match spec.input.layout {
        Layout::Nchw => vec![batch, Dim::Fixed(3), Dim::Fixed(height), Dim::Fixed(width)],
        Layout::Nhwc => vec![batch, Dim::Fixed(height), Dim::Fixed(width), Dim::Fixed(3)],
    }
}

/// A stand-in for the file `spec` describes (`spec_text` is the spec file,
/// for the blocks' order).
pub fn stand_in(spec: &ModelSpec, spec_text: &str, real: &RealFile) -> ModelProto {
    let mut b = GraphBuilder::new(&format!("stand-in for {}", spec.name));
    let [width, height] = spec.input.size.map(i64::from);
    let mut x = b.input(&spec.input.name, &input_dims(spec, real.batch.clone()));
    if spec.input.layout == Layout::Nhwc {
        x = b.transpose("standin/to_nchw", &x, &[0, 3, 1, 2]);
    }
    let stride = ConvOptions { kernel: [1, 1], pads: [0; 4], strides: [TOTAL_STRIDE, TOTAL_STRIDE] };
    let stem = pattern(&mut b, "standin/stem/weight", &[WIDTH, 3, 1, 1]);
    x = b.conv("standin/stem", &x, &stem, None, stride);
    x = b.relu("standin/stem/relu", &x);

    let map_side = [height / TOTAL_STRIDE, width / TOTAL_STRIDE];
    let mut hints = Vec::new();
    for (name, block) in blocks_in_file_order(spec, spec_text) {
        x = b.relu(&format!("standin/{name}/in"), &x);
        x = b.rename(&x, &block.input);
        hints.push((block.input.clone(), vec![WIDTH, map_side[0], map_side[1]]));
        x = block_ops(&mut b, name, &block.params, &x);
    }

    let shape = conv_base_shape(spec);
    let channels = shape[0] as i64;
    let widen = pattern(&mut b, "standin/widen/weight", &[channels, WIDTH, 1, 1]);
    let one = ConvOptions { kernel: [1, 1], pads: [0; 4], strides: [1, 1] };
    x = b.conv("standin/widen", &x, &widen, None, one);
    x = b.relu("standin/widen/relu", &x);
    let base = match shape[..] {
        [_, h, w] if [h as i64, w as i64] == map_side => x,
        // EfficientNet-Lite: a fixed-window average pool over the whole map.
        [_, 1, 1] => b.node("AveragePool", "standin/avg_pool", &[&x], vec![ints_attribute("kernel_shape", &map_side)]),
        // Already pooled.
        [_] => {
            let pooled = b.node("GlobalAveragePool", "standin/global_pool", &[&x], Vec::new());
            b.flatten("standin/pooled", &pooled, 1)
        }
        _ => panic!("no stand-in for conv_base.shape {shape:?} at input {:?}", spec.input.size),
    };
    x = b.rename(&base, &spec.conv_base.output);
    hints.push((spec.conv_base.output.clone(), shape.iter().map(|&d| d as i64).collect()));

    // The classifier the cut removes.
    if shape.len() == 3 {
        if shape[1] > 1 || shape[2] > 1 {
            x = b.node("GlobalAveragePool", "standin/head/pool", &[&x], Vec::new());
        }
        x = b.flatten("standin/head/flatten", &x, 1);
    }
    let dense_w = pattern(&mut b, "standin/head/dense/weight", &[CLASSES, channels]);
    let dense_b = pattern(&mut b, "standin/head/dense/bias", &[CLASSES]);
    x = b.linear("standin/head/dense", &x, &dense_w, &dense_b);
    if real.softmax {
        x = b.softmax("standin/head/softmax", &x, 1);
    }
    b.rename(&x, real.output);
    b.output(real.output, &[real.batch.clone(), Dim::Fixed(CLASSES)]);

    let mut model = b.finish(
        "models-tests",
        &[("weights", "stand-in: a fixed pattern, not trained and not the real file".to_owned())],
    );
    // A file with a fixed batch often carries shape hints saying so (from
    // shape inference); the cut must not keep them.
    if let Dim::Fixed(batch) = real.batch {
        let graph = model.graph.as_mut().unwrap();
        for (name, dims) in hints {
            let dims: Vec<Dim> = [batch].into_iter().chain(dims).map(Dim::Fixed).collect();
            graph.value_info.push(tensor_value_info(&name, data_type::FLOAT, Some(&dims)));
        }
    }
    model
}

/// One op per parameter, on `WIDTH` channels: `*weight` → a 1x1 conv (with
/// the `*bias` right after it, if any), `*gamma` + `*beta` → an inference
/// BatchNormalization (running statistics named like MXNet's), anything
/// else → a per-channel Mul or Add.
fn block_ops(b: &mut GraphBuilder, block: &str, params: &[String], input: &str) -> String {
    let mut x = input.to_owned();
    let mut i = 0;
    while i < params.len() {
        let name = &params[i];
        let next = params.get(i + 1);
        let node = format!("standin/{block}/{i}");
        if let Some(prefix) = name.strip_suffix("weight") {
            let weight = pattern(b, name, &[WIDTH, WIDTH, 1, 1]);
            let bias = next.filter(|n| *n == &format!("{prefix}bias")).map(|n| pattern(b, n, &[WIDTH]));
            let one = ConvOptions { kernel: [1, 1], pads: [0; 4], strides: [1, 1] };
            x = b.conv(&node, &x, &weight, bias.as_deref(), one);
            i += 1 + usize::from(bias.is_some());
        } else if let (Some(prefix), Some(beta)) = (name.strip_suffix("gamma"), next) {
            assert_eq!(beta, &format!("{prefix}beta"), "gamma without its beta in block {block}");
            let gamma = pattern(b, name, &[WIDTH]);
            let beta = pattern(b, beta, &[WIDTH]);
            let mean = b.initializer(&format!("{prefix}running_mean"), &[WIDTH], &[0.01; WIDTH as usize]);
            let var = b.initializer(&format!("{prefix}running_var"), &[WIDTH], &[1.0; WIDTH as usize]);
            x = b.node(
                "BatchNormalization",
                &node,
                &[&x, &gamma, &beta, &mean, &var],
                vec![float_attribute("epsilon", 1e-5)],
            );
            i += 2;
        } else {
            let value = pattern(b, name, &[WIDTH, 1, 1]);
            x = b.node(if i % 2 == 0 { "Mul" } else { "Add" }, &node, &[&x, &value], Vec::new());
            i += 1;
        }
        x = b.relu(&format!("{node}/relu"), &x);
    }
    x
}

/// An f32 initializer of small, varied, fixed values.
fn pattern(b: &mut GraphBuilder, name: &str, dims: &[i64]) -> String {
    let count = dims.iter().product::<i64>() as usize;
    let offset = name.len() as f32;
    let values: Vec<f32> = (0..count).map(|k| 0.25 * (k as f32 * 0.618 + offset).sin()).collect();
    b.initializer(name, dims, &values)
}
