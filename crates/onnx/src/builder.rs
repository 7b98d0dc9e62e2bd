//! A small builder for sequential ONNX graphs.
//!
//! Each op method takes the node's name and its inputs, adds the node, and
//! returns the name of its output tensor: `{node name}_output_0`, the
//! convention of PyTorch's exporter, so generated graphs cut at the same
//! names a real torchvision export does.

use crate::proto::{
    attribute_type, data_type, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto,
    StringStringEntryProto, TensorProto,
};
use crate::shape::{tensor_value_info, Dim};
use crate::{tensor, IR_VERSION, OPSET_VERSION};

/// Window settings of a 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvOptions {
    pub kernel: [i64; 2],
    /// Top, left, bottom, right (the ONNX order: all begins, then all ends).
    pub pads: [i64; 4],
    pub strides: [i64; 2],
}

impl ConvOptions {
    /// The VGG convolution: 3x3, padding 1, stride 1, so H and W are kept.
    pub const SAME_3X3: ConvOptions = ConvOptions { kernel: [3, 3], pads: [1, 1, 1, 1], strides: [1, 1] };
}

/// Builds a graph node by node; [`GraphBuilder::finish`] wraps it in a model.
#[derive(Debug, Default)]
pub struct GraphBuilder {
    graph: GraphProto,
}

impl GraphBuilder {
    pub fn new(graph_name: &str) -> GraphBuilder {
        GraphBuilder { graph: GraphProto { name: graph_name.to_owned(), ..Default::default() } }
    }

    /// Declares an f32 graph input and returns its name.
    pub fn input(&mut self, name: &str, dims: &[Dim]) -> String {
        self.graph.input.push(tensor_value_info(name, data_type::FLOAT, Some(dims)));
        name.to_owned()
    }

    /// Declares an f32 graph output.
    pub fn output(&mut self, name: &str, dims: &[Dim]) {
        self.graph.output.push(tensor_value_info(name, data_type::FLOAT, Some(dims)));
    }

    /// Adds an f32 initializer and returns its name.
    pub fn initializer(&mut self, name: &str, dims: &[i64], values: &[f32]) -> String {
        self.graph.initializer.push(tensor::f32_tensor(name, dims, values));
        name.to_owned()
    }

    /// Adds an already built initializer (an i64 shape, say).
    pub fn initializer_tensor(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name.clone();
        self.graph.initializer.push(tensor);
        name
    }

    /// Adds any node and returns its first output's name.
    pub fn node(&mut self, op_type: &str, name: &str, inputs: &[&str], attributes: Vec<AttributeProto>) -> String {
        let output = format!("{name}_output_0");
        self.graph.node.push(NodeProto {
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            input: inputs.iter().map(|&s| s.to_owned()).collect(),
            output: vec![output.clone()],
            attribute: attributes,
            ..Default::default()
        });
        output
    }

    /// Renames a node output (a graph output's name, say) where it is
    /// produced and wherever it is consumed.
    pub fn rename(&mut self, tensor: &str, new_name: &str) -> String {
        for node in &mut self.graph.node {
            for name in node.input.iter_mut().chain(node.output.iter_mut()) {
                if name == tensor {
                    *name = new_name.to_owned();
                }
            }
        }
        new_name.to_owned()
    }

    pub fn conv(&mut self, name: &str, input: &str, weight: &str, bias: Option<&str>, options: ConvOptions) -> String {
        let mut inputs = vec![input, weight];
        inputs.extend(bias);
        let attributes = vec![
            ints_attribute("kernel_shape", &options.kernel),
            ints_attribute("pads", &options.pads),
            ints_attribute("strides", &options.strides),
        ];
        self.node("Conv", name, &inputs, attributes)
    }

    /// Inference-form batch normalisation over `[scale, bias, mean, var]`.
    pub fn batch_norm(&mut self, name: &str, input: &str, params: [&str; 4], epsilon: f32) -> String {
        let [scale, bias, mean, var] = params;
        self.node(
            "BatchNormalization",
            name,
            &[input, scale, bias, mean, var],
            vec![float_attribute("epsilon", epsilon)],
        )
    }

    pub fn relu(&mut self, name: &str, input: &str) -> String {
        self.node("Relu", name, &[input], Vec::new())
    }

    /// Max pooling with a square `size` window and stride `size`.
    pub fn max_pool(&mut self, name: &str, input: &str, size: i64) -> String {
        let attributes = vec![ints_attribute("kernel_shape", &[size, size]), ints_attribute("strides", &[size, size])];
        self.node("MaxPool", name, &[input], attributes)
    }

    pub fn flatten(&mut self, name: &str, input: &str, axis: i64) -> String {
        self.node("Flatten", name, &[input], vec![int_attribute("axis", axis)])
    }

    /// Reshapes to `target` (0 copies a dim, -1 infers one); the target
    /// shape becomes an i64 initializer named `{name}.shape`.
    pub fn reshape(&mut self, name: &str, input: &str, target: &[i64]) -> String {
        let shape_name = format!("{name}.shape");
        let shape = tensor::i64_tensor(&shape_name, &[target.len() as i64], target);
        self.initializer_tensor(shape);
        self.node("Reshape", name, &[input, &shape_name], Vec::new())
    }

    /// `input · weightᵀ + bias`, the way a PyTorch `Linear` exports
    /// (weight `[out, in]`, `transB = 1`).
    pub fn linear(&mut self, name: &str, input: &str, weight: &str, bias: &str) -> String {
        self.node(
            "Gemm",
            name,
            &[input, weight, bias],
            vec![float_attribute("alpha", 1.0), float_attribute("beta", 1.0), int_attribute("transB", 1)],
        )
    }

    pub fn softmax(&mut self, name: &str, input: &str, axis: i64) -> String {
        self.node("Softmax", name, &[input], vec![int_attribute("axis", axis)])
    }

    pub fn transpose(&mut self, name: &str, input: &str, perm: &[i64]) -> String {
        self.node("Transpose", name, &[input], vec![ints_attribute("perm", perm)])
    }

    /// Wraps the graph in a model (IR [`IR_VERSION`], opset
    /// [`OPSET_VERSION`]) with the given metadata.
    pub fn finish(self, producer: &str, metadata: &[(&str, String)]) -> ModelProto {
        ModelProto {
            ir_version: IR_VERSION,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: OPSET_VERSION }],
            producer_name: producer.to_owned(),
            producer_version: env!("CARGO_PKG_VERSION").to_owned(),
            graph: Some(self.graph),
            metadata_props: metadata
                .iter()
                .map(|(key, value)| StringStringEntryProto { key: (*key).to_owned(), value: value.clone() })
                .collect(),
            ..Default::default()
        }
    }
}

pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto { name: name.to_owned(), r#type: attribute_type::INT, i: value, ..Default::default() }
}

pub fn ints_attribute(name: &str, values: &[i64]) -> AttributeProto {
    AttributeProto { name: name.to_owned(), r#type: attribute_type::INTS, ints: values.to_vec(), ..Default::default() }
}

pub fn float_attribute(name: &str, value: f32) -> AttributeProto {
    AttributeProto { name: name.to_owned(), r#type: attribute_type::FLOAT, f: value, ..Default::default() }
}
