//! A typed listing of a graph: what `cargo xtask inspect-model` prints, so
//! that someone writing a model spec can find the conv base's last tensor,
//! the block boundaries and the parameter names.

use std::collections::HashMap;

use crate::edit::{self, TensorSummary};
use crate::proto::{data_type, GraphProto, ModelProto};
use crate::shape::{self, Dim};
use crate::{graph, tensor, GraphError};

/// Ops after which a network usually stops being convolutional: the tensor
/// feeding one of them is a likely conv-base output.
pub const CUT_HINT_OPS: &[&str] = &["GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "Flatten", "Squeeze", "Gemm"];

/// Everything `inspect` found in a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    pub ir_version: i64,
    pub producer: String,
    /// `(domain, version)`; the default domain is written `ai.onnx`.
    pub opsets: Vec<(String, i64)>,
    /// The inputs callers feed (initializers listed as inputs left out).
    pub inputs: Vec<TensorSummary>,
    pub outputs: Vec<TensorSummary>,
    /// Every node output, in graph order.
    pub tensors: Vec<NodeTensor>,
    pub initializers: Vec<Initializer>,
    pub node_count: usize,
    /// Elements in floating-point initializers (the trainable kind).
    pub parameter_count: u64,
}

/// One node output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTensor {
    /// Its position among the node outputs, in graph order.
    pub index: usize,
    pub name: String,
    /// The op that makes it.
    pub op_type: String,
    pub node_name: String,
    /// One of [`data_type`]; `None` when inference does not know the op.
    pub elem_type: Option<i32>,
    /// `None` when even the rank is unknown; dims may be [`Dim::Unknown`].
    pub dims: Option<Vec<Dim>>,
    /// The op types that read it, in graph order (a graph output has none).
    pub consumers: Vec<String>,
    /// For a feature map (rank 4 or unknown): the first of its consumers
    /// that is in [`CUT_HINT_OPS`], or an AveragePool that reduces it to
    /// 1×1. It is then a likely conv-base output.
    pub cut_hint: Option<String>,
}

/// One initializer (weight).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Initializer {
    pub name: String,
    pub elem_type: i32,
    pub dims: Vec<i64>,
    pub elements: u64,
    /// The op types that read it.
    pub consumers: Vec<String>,
}

/// Lists `model`: inputs, outputs, every node output with its op and the
/// shape inference's shape, the initializers, and totals.
pub fn inspect(model: &ModelProto) -> Result<ModelSummary, GraphError> {
    let g = graph(model)?;
    let mut known = shape::infer(g);
    // Declared outputs fill in what inference does not know.
    for output in &g.output {
        if let (false, Some(info)) = (known.contains_key(&output.name), shape::tensor_info(output)) {
            known.insert(output.name.clone(), info);
        }
    }
    let consumers = consumers(g);
    let consumers_of = |name: &str| -> Vec<String> {
        consumers.get(name).map(|ops| ops.iter().map(|&i| g.node[i].op_type.clone()).collect()).unwrap_or_default()
    };

    let mut tensors = Vec::new();
    for node in &g.node {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            let info = known.get(output);
            let cut_hint = consumers.get(output.as_str()).and_then(|readers| {
                readers.iter().map(|&i| &g.node[i]).find_map(|reader| {
                    // EfficientNet-style heads average with a window as big as the map.
                    let whole_map_pool = reader.op_type == "AveragePool"
                        && reader.output.first().and_then(|o| known.get(o)).and_then(|i| i.dims.as_ref()).is_some_and(
                            |dims| dims.len() == 4 && dims[2] == Dim::Fixed(1) && dims[3] == Dim::Fixed(1),
                        );
                    (CUT_HINT_OPS.contains(&reader.op_type.as_str()) || whole_map_pool).then(|| reader.op_type.clone())
                })
            });
            // A feature map (or a tensor of unknown rank), not a classifier's vector.
            let map_like = info.and_then(|i| i.dims.as_ref()).is_none_or(|dims| dims.len() >= 4);
            let cut_hint = cut_hint.filter(|_| map_like);
            tensors.push(NodeTensor {
                index: tensors.len(),
                name: output.clone(),
                op_type: node.op_type.clone(),
                node_name: node.name.clone(),
                elem_type: info.map(|i| i.elem_type),
                dims: info.and_then(|i| i.dims.clone()),
                consumers: consumers_of(output),
                cut_hint,
            });
        }
    }

    let initializers: Vec<Initializer> = g
        .initializer
        .iter()
        .map(|t| Initializer {
            name: t.name.clone(),
            elem_type: t.data_type,
            dims: t.dims.clone(),
            elements: tensor::element_count(&t.dims) as u64,
            consumers: consumers_of(&t.name),
        })
        .collect();
    let parameter_count = initializers.iter().filter(|t| is_floating(t.elem_type)).map(|t| t.elements).sum();

    Ok(ModelSummary {
        ir_version: model.ir_version,
        producer: [model.producer_name.as_str(), model.producer_version.as_str()].join(" ").trim().to_owned(),
        opsets: model
            .opset_import
            .iter()
            .map(|o| (if o.domain.is_empty() { "ai.onnx".to_owned() } else { o.domain.clone() }, o.version))
            .collect(),
        inputs: edit::inputs(model)?,
        outputs: edit::outputs(model)?,
        tensors,
        initializers,
        node_count: g.node.len(),
        parameter_count,
    })
}

impl ModelSummary {
    /// The same summary with only the inputs, outputs, tensors and
    /// initializers whose name contains `pattern`; the totals stay those of
    /// the whole model.
    pub fn filtered(&self, pattern: &str) -> ModelSummary {
        let keep = |name: &str| name.contains(pattern);
        ModelSummary {
            inputs: self.inputs.iter().filter(|t| keep(&t.name)).cloned().collect(),
            outputs: self.outputs.iter().filter(|t| keep(&t.name)).cloned().collect(),
            tensors: self.tensors.iter().filter(|t| keep(&t.name)).cloned().collect(),
            initializers: self.initializers.iter().filter(|t| keep(&t.name)).cloned().collect(),
            ..self.clone()
        }
    }
}

/// `[N, 3, 224, 224]`; `?` for an unknown rank.
pub fn format_dims(dims: Option<&[Dim]>) -> String {
    match dims {
        Some(dims) => format!("[{}]", dims.iter().map(Dim::to_string).collect::<Vec<_>>().join(", ")),
        None => "?".to_owned(),
    }
}

/// The ONNX name of an element type (`float`, `int64`, …).
pub fn elem_type_name(elem_type: i32) -> String {
    match elem_type {
        data_type::UNDEFINED => "?".to_owned(),
        data_type::FLOAT => "float".to_owned(),
        data_type::UINT8 => "uint8".to_owned(),
        data_type::INT8 => "int8".to_owned(),
        4 => "uint16".to_owned(),
        5 => "int16".to_owned(),
        data_type::INT32 => "int32".to_owned(),
        data_type::INT64 => "int64".to_owned(),
        data_type::STRING => "string".to_owned(),
        data_type::BOOL => "bool".to_owned(),
        data_type::FLOAT16 => "float16".to_owned(),
        data_type::DOUBLE => "double".to_owned(),
        12 => "uint32".to_owned(),
        13 => "uint64".to_owned(),
        16 => "bfloat16".to_owned(),
        other => format!("type {other}"),
    }
}

fn is_floating(elem_type: i32) -> bool {
    matches!(elem_type, data_type::FLOAT | data_type::FLOAT16 | data_type::DOUBLE | 16)
}

/// Tensor name → the indices of the nodes that read it, in graph order.
fn consumers(g: &GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut readers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, node) in g.node.iter().enumerate() {
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            let list = readers.entry(input.as_str()).or_default();
            if list.last() != Some(&index) {
                list.push(index);
            }
        }
    }
    readers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builder::{ConvOptions, GraphBuilder};
    use crate::vgg;

    fn tensor<'s>(summary: &'s ModelSummary, name: &str) -> &'s NodeTensor {
        summary.tensors.iter().find(|t| t.name == name).unwrap_or_else(|| panic!("no tensor {name}"))
    }

    #[test]
    fn tiny_vgg_is_listed_with_ops_shapes_and_the_cut_point() {
        let summary = inspect(&vgg::tiny_vgg(7)).unwrap();

        assert_eq!(summary.opsets, [("ai.onnx".to_owned(), crate::OPSET_VERSION)]);
        assert_eq!(summary.inputs.len(), 1);
        assert_eq!(summary.inputs[0].name, vgg::INPUT_NAME);
        assert_eq!(format_dims(summary.inputs[0].dims.as_deref()), "[N, 3, 32, 32]");
        assert_eq!(summary.outputs[0].name, vgg::OUTPUT_NAME);
        // 13 convs + 13 relus + 5 pools + flatten + 3 gemms + 2 relus.
        assert_eq!(summary.node_count, 37);
        assert_eq!(summary.tensors.len(), 37);
        assert_eq!(summary.parameter_count, 17_590);

        let first = &summary.tensors[0];
        assert_eq!((first.name.as_str(), first.op_type.as_str()), ("/features/features.0/Conv_output_0", "Conv"));
        assert_eq!(format_dims(first.dims.as_deref()), "[N, 4, 32, 32]");
        assert_eq!(first.consumers, ["Relu"]);
        assert_eq!(first.elem_type, Some(data_type::FLOAT));

        let base = tensor(&summary, vgg::CONV_BASE_OUTPUT);
        assert_eq!(base.op_type, "MaxPool");
        assert_eq!(format_dims(base.dims.as_deref()), "[N, 16, 1, 1]");
        assert_eq!(base.cut_hint.as_deref(), Some("Flatten"));
        // Only the map that is flattened: the vectors feeding the Gemms are the classifier's.
        let hinted: Vec<&str> =
            summary.tensors.iter().filter(|t| t.cut_hint.is_some()).map(|t| t.name.as_str()).collect();
        assert_eq!(hinted, [vgg::CONV_BASE_OUTPUT]);
        assert_eq!(summary.tensors.last().unwrap().name, vgg::OUTPUT_NAME);

        let weight = summary.initializers.iter().find(|t| t.name == "features.28.weight").unwrap();
        assert_eq!((weight.dims.as_slice(), weight.elements), (&[16, 16, 3, 3][..], 16 * 16 * 9));
        assert_eq!(elem_type_name(weight.elem_type), "float");
        assert_eq!(weight.consumers, ["Conv"]);
    }

    #[test]
    fn unknown_ops_give_unknown_shapes_and_whole_map_pools_are_hinted() {
        let mut b = GraphBuilder::new("nhwc");
        let x = b.input("images:0", &[Dim::Fixed(1), Dim::Fixed(8), Dim::Fixed(8), Dim::Fixed(3)]);
        let x = b.transpose("to_nchw", &x, &[0, 3, 1, 2]);
        let w = b.initializer("head/conv/kernel", &[5, 3, 1, 1], &[0.1; 15]);
        let x = b.conv("head/conv", &x, &w, None, ConvOptions { kernel: [1, 1], pads: [0; 4], strides: [1, 1] });
        let map = b.relu("head/Relu6", &x);
        let pooled = b.node(
            "AveragePool",
            "head/AvgPool",
            &[&map],
            vec![crate::builder::ints_attribute("kernel_shape", &[8, 8])],
        );
        let squeezed = b.node("Squeeze", "head/Squeeze", &[&pooled], Vec::new());
        let (dense_w, dense_b) =
            (b.initializer("dense/w", &[2, 5], &[0.1; 10]), b.initializer("dense/b", &[2], &[0.0; 2]));
        let logits = b.linear("dense", &squeezed, &dense_w, &dense_b);
        let probabilities = b.softmax("Softmax", &logits, 1);
        b.output(&probabilities, &[Dim::Fixed(1), Dim::Fixed(2)]);
        let summary = inspect(&b.finish("test", &[])).unwrap();

        assert_eq!(format_dims(tensor(&summary, "to_nchw_output_0").dims.as_deref()), "[1, 3, 8, 8]");
        assert_eq!(tensor(&summary, &map).cut_hint.as_deref(), Some("AveragePool"));
        let pool = tensor(&summary, &pooled);
        assert_eq!(format_dims(pool.dims.as_deref()), "[1, 5, 1, 1]");
        assert_eq!(pool.cut_hint.as_deref(), Some("Squeeze"));
        // Shape inference does not know Squeeze: its output stays unknown.
        let squeeze = tensor(&summary, &squeezed);
        assert_eq!((squeeze.elem_type, squeeze.dims.as_ref()), (None, None));
        assert_eq!(format_dims(squeeze.dims.as_deref()), "?");
        assert_eq!(tensor(&summary, &logits).dims, None);
        // A declared graph output's shape stands in for inference.
        assert_eq!(format_dims(tensor(&summary, &probabilities).dims.as_deref()), "[1, 2]");

        let only_head = summary.filtered("head/conv");
        let listed: Vec<(usize, &str)> = only_head.tensors.iter().map(|t| (t.index, t.name.as_str())).collect();
        assert_eq!(listed, [(1, "head/conv_output_0")]);
        assert_eq!(only_head.initializers.len(), 1);
        assert!(only_head.inputs.is_empty() && only_head.outputs.is_empty());
        assert_eq!((only_head.node_count, only_head.parameter_count), (summary.node_count, 15 + 10 + 2));
    }
}
