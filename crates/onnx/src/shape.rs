//! Tensor dims, value infos, and a light shape inference.
//!
//! The inference covers the ops a VGG-style export uses (Conv, pooling,
//! activations, Transpose, Flatten, Reshape, Gemm, MatMul, elementwise
//! arithmetic). It is used to describe a new graph output after a cut and
//! after freeing input dims; where it does not know an op, the result is
//! simply unknown, which ONNX allows.

use std::collections::HashMap;

use crate::proto::tensor_shape_proto::{dimension, Dimension};
use crate::proto::{
    attribute_type, data_type, type_proto, GraphProto, NodeProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor;

/// One dimension of a tensor's shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    /// A fixed size.
    Fixed(i64),
    /// A named free size, such as `"N"` for the batch.
    Named(String),
    /// A free size nobody named.
    Unknown,
}

impl Dim {
    pub fn named(name: &str) -> Dim {
        Dim::Named(name.to_owned())
    }

    /// The fixed size, if there is one.
    pub fn fixed(&self) -> Option<i64> {
        match self {
            Dim::Fixed(size) => Some(*size),
            _ => None,
        }
    }

    fn to_proto(&self) -> Dimension {
        let value = match self {
            Dim::Fixed(size) => Some(dimension::Value::DimValue(*size)),
            Dim::Named(name) => Some(dimension::Value::DimParam(name.clone())),
            Dim::Unknown => None,
        };
        Dimension { value, denotation: String::new() }
    }

    fn from_proto(dim: &Dimension) -> Dim {
        match &dim.value {
            Some(dimension::Value::DimValue(size)) => Dim::Fixed(*size),
            Some(dimension::Value::DimParam(name)) if !name.is_empty() => Dim::Named(name.clone()),
            _ => Dim::Unknown,
        }
    }
}

impl std::fmt::Display for Dim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Dim::Fixed(size) => write!(f, "{size}"),
            Dim::Named(name) => f.write_str(name),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// What is known of a tensor: its element type and, maybe, its dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// One of [`data_type`].
    pub elem_type: i32,
    /// `None` when even the rank is unknown.
    pub dims: Option<Vec<Dim>>,
}

/// A value info describing a tensor.
pub fn tensor_value_info(name: &str, elem_type: i32, dims: Option<&[Dim]>) -> ValueInfoProto {
    ValueInfoProto {
        name: name.to_owned(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type,
                shape: dims.map(|dims| TensorShapeProto { dim: dims.iter().map(Dim::to_proto).collect() }),
            })),
            denotation: String::new(),
        }),
        ..Default::default()
    }
}

/// Reads a value info's tensor type; `None` for non-tensor values.
pub fn tensor_info(value_info: &ValueInfoProto) -> Option<TensorInfo> {
    match value_info.r#type.as_ref()?.value.as_ref()? {
        type_proto::Value::TensorType(tensor) => Some(TensorInfo {
            elem_type: tensor.elem_type,
            dims: tensor.shape.as_ref().map(|shape| shape.dim.iter().map(Dim::from_proto).collect()),
        }),
        _ => None,
    }
}

/// Replaces a tensor value info's dims, keeping its element type.
pub fn set_dims(value_info: &mut ValueInfoProto, dims: Option<&[Dim]>) {
    if let Some(TypeProto { value: Some(type_proto::Value::TensorType(tensor)), .. }) = value_info.r#type.as_mut() {
        tensor.shape = dims.map(|dims| TensorShapeProto { dim: dims.iter().map(Dim::to_proto).collect() });
    }
}

/// Infers what it can about every tensor in the graph, walking nodes in
/// order. Existing value infos (graph inputs, outputs and `value_info`) are
/// trusted as they are; nodes fill in the rest.
pub fn infer(graph: &GraphProto) -> HashMap<String, TensorInfo> {
    let mut known: HashMap<String, TensorInfo> = HashMap::new();
    for init in &graph.initializer {
        known.insert(
            init.name.clone(),
            TensorInfo { elem_type: init.data_type, dims: Some(init.dims.iter().map(|&d| Dim::Fixed(d)).collect()) },
        );
    }
    for value_info in graph.input.iter().chain(&graph.value_info) {
        if let Some(info) = tensor_info(value_info) {
            known.insert(value_info.name.clone(), info);
        }
    }
    let constants = ConstantInts::collect(graph);
    for node in &graph.node {
        let Some(out) = node.output.first() else {
            continue;
        };
        if known.contains_key(out) || out.is_empty() {
            continue;
        }
        if let Some(info) = infer_node(node, &known, &constants) {
            known.insert(out.clone(), info);
        }
    }
    known
}

/// Small int64 constants (Reshape targets), from initializers and Constant
/// nodes.
struct ConstantInts(HashMap<String, Vec<i64>>);

impl ConstantInts {
    fn collect(graph: &GraphProto) -> ConstantInts {
        let mut values = HashMap::new();
        for init in &graph.initializer {
            if init.data_type == data_type::INT64 {
                if let Ok(ints) = tensor::i64_values(init) {
                    values.insert(init.name.clone(), ints);
                }
            }
        }
        for node in graph.node.iter().filter(|n| n.op_type == "Constant") {
            let value = node.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref());
            if let (Some(value), Some(out)) = (value, node.output.first()) {
                if let Ok(ints) = tensor::i64_values(value) {
                    values.insert(out.clone(), ints);
                }
            }
        }
        ConstantInts(values)
    }
}

/// Ops whose output has the type and shape of their first input.
const SHAPE_PRESERVING: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Elu",
    "Selu",
    "Clip",
    "Softmax",
    "LogSoftmax",
    "Dropout",
    "Identity",
    "BatchNormalization",
    "LRN",
    "InstanceNormalization",
];

const ELEMENTWISE: &[&str] = &["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"];

fn infer_node(node: &NodeProto, known: &HashMap<String, TensorInfo>, constants: &ConstantInts) -> Option<TensorInfo> {
    let input = |i: usize| node.input.get(i).and_then(|name| known.get(name));
    let first = input(0);
    let elem_type = first.map(|info| info.elem_type);
    let op = node.op_type.as_str();
    if !node.domain.is_empty() && node.domain != "ai.onnx" {
        return None;
    }
    if SHAPE_PRESERVING.contains(&op) {
        return first.cloned();
    }
    let with_dims = |dims: Option<Vec<Dim>>| elem_type.map(|elem_type| TensorInfo { elem_type, dims });
    let in_dims = first.and_then(|info| info.dims.clone());
    match op {
        "Conv" => {
            let weight = input(1)?.dims.clone()?;
            with_dims(in_dims.map(|dims| window_output(node, &dims, Some(&weight))))
        }
        "MaxPool" | "AveragePool" | "LpPool" => with_dims(in_dims.map(|dims| window_output(node, &dims, None))),
        "GlobalAveragePool" | "GlobalMaxPool" => {
            with_dims(in_dims.map(|dims| {
                dims.iter().enumerate().map(|(i, d)| if i < 2 { d.clone() } else { Dim::Fixed(1) }).collect()
            }))
        }
        "Transpose" => with_dims(in_dims.map(|dims| {
            let perm = ints_attribute(node, "perm").unwrap_or_else(|| (0..dims.len() as i64).rev().collect());
            perm.iter().map(|&p| dims.get(p as usize).cloned().unwrap_or(Dim::Unknown)).collect()
        })),
        "Flatten" => with_dims(in_dims.map(|dims| {
            let axis = int_attribute(node, "axis").unwrap_or(1);
            let axis = if axis < 0 { axis + dims.len() as i64 } else { axis } as usize;
            vec![product(&dims[..axis.min(dims.len())]), product(&dims[axis.min(dims.len())..])]
        })),
        "Reshape" => {
            let target = constants.0.get(node.input.get(1)?)?;
            with_dims(Some(reshape_output(in_dims.as_deref(), target)))
        }
        "Gemm" => {
            let a = in_dims?;
            let b = input(1)?.dims.clone()?;
            let (m, n) = match (a.as_slice(), b.as_slice()) {
                ([a0, a1], [b0, b1]) => {
                    let m = if int_attribute(node, "transA") == Some(1) { a1 } else { a0 };
                    let n = if int_attribute(node, "transB") == Some(1) { b0 } else { b1 };
                    (m.clone(), n.clone())
                }
                _ => return with_dims(None),
            };
            with_dims(Some(vec![m, n]))
        }
        "MatMul" => {
            let a = in_dims?;
            let b = input(1)?.dims.clone()?;
            with_dims(matmul_output(&a, &b))
        }
        _ if ELEMENTWISE.contains(&op) => {
            let dims = node
                .input
                .iter()
                .map(|name| known.get(name).and_then(|info| info.dims.clone()))
                .collect::<Option<Vec<_>>>()
                .map(|all| broadcast(&all));
            with_dims(dims.flatten())
        }
        _ => None,
    }
}

pub(crate) fn int_attribute(node: &NodeProto, name: &str) -> Option<i64> {
    node.attribute.iter().find(|a| a.name == name && a.r#type == attribute_type::INT).map(|a| a.i)
}

pub(crate) fn float_attribute(node: &NodeProto, name: &str) -> Option<f32> {
    node.attribute.iter().find(|a| a.name == name && a.r#type == attribute_type::FLOAT).map(|a| a.f)
}

pub(crate) fn ints_attribute(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    node.attribute.iter().find(|a| a.name == name && a.r#type == attribute_type::INTS).map(|a| a.ints.clone())
}

pub(crate) fn string_attribute(node: &NodeProto, name: &str) -> Option<String> {
    node.attribute
        .iter()
        .find(|a| a.name == name && a.r#type == attribute_type::STRING)
        .map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// The product of dims: fixed if all are, the one free dim if the others
/// are all 1 (the batch, flattened alone), else unknown.
fn product(dims: &[Dim]) -> Dim {
    let not_one: Vec<&Dim> = dims.iter().filter(|d| **d != Dim::Fixed(1)).collect();
    if let [single] = not_one[..] {
        return single.clone();
    }
    not_one.iter().map(|d| d.fixed()).try_fold(1i64, |acc, d| d.map(|d| acc * d)).map_or(Dim::Unknown, Dim::Fixed)
}

/// Output dims of a sliding-window op (Conv with `weight`, pooling without),
/// for `[N, C, spatial...]` inputs.
fn window_output(node: &NodeProto, dims: &[Dim], weight: Option<&[Dim]>) -> Vec<Dim> {
    let spatial = dims.len().saturating_sub(2);
    let kernel = ints_attribute(node, "kernel_shape")
        .or_else(|| weight.map(|w| w[2..].iter().map(|d| d.fixed().unwrap_or(-1)).collect()))
        .unwrap_or_default();
    let strides = ints_attribute(node, "strides").unwrap_or_else(|| vec![1; spatial]);
    let dilations = ints_attribute(node, "dilations").unwrap_or_else(|| vec![1; spatial]);
    let pads = ints_attribute(node, "pads").unwrap_or_else(|| vec![0; 2 * spatial]);
    let auto_pad = string_attribute(node, "auto_pad").unwrap_or_default();
    let ceil_mode = int_attribute(node, "ceil_mode") == Some(1);

    let mut out = vec![dims.first().cloned().unwrap_or(Dim::Unknown)];
    out.push(match weight {
        Some(weight) => weight.first().cloned().unwrap_or(Dim::Unknown),
        None => dims.get(1).cloned().unwrap_or(Dim::Unknown),
    });
    for axis in 0..spatial {
        let size = dims[axis + 2].fixed();
        let k = kernel.get(axis).copied().unwrap_or(-1);
        let s = strides.get(axis).copied().unwrap_or(1).max(1);
        let d = dilations.get(axis).copied().unwrap_or(1);
        let dim = match (size, auto_pad.as_str()) {
            (Some(size), "SAME_UPPER" | "SAME_LOWER") => Dim::Fixed((size + s - 1) / s),
            (Some(size), "VALID") if k > 0 => Dim::Fixed((size - (k - 1) * d - 1) / s + 1),
            (Some(size), "" | "NOTSET") if k > 0 => {
                let padded = size + pads.get(axis).unwrap_or(&0) + pads.get(axis + spatial).unwrap_or(&0);
                let span = padded - (k - 1) * d - 1;
                let steps = if ceil_mode { (span + s - 1) / s } else { span / s };
                Dim::Fixed(steps + 1)
            }
            _ => Dim::Unknown,
        };
        out.push(dim);
    }
    out
}

fn reshape_output(input: Option<&[Dim]>, target: &[i64]) -> Vec<Dim> {
    let mut out: Vec<Dim> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| match t {
            0 => input.and_then(|dims| dims.get(i).cloned()).unwrap_or(Dim::Unknown),
            -1 => Dim::Unknown,
            t => Dim::Fixed(t),
        })
        .collect();
    // Resolve a single -1 when every other size is known.
    if let (Some(total), Some(hole)) =
        (input.and_then(|dims| product(dims).fixed()), target.iter().position(|&t| t == -1))
    {
        let rest = out
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != hole)
            .map(|(_, d)| d.fixed())
            .try_fold(1i64, |acc, d| d.map(|d| acc * d));
        if let Some(rest) = rest.filter(|&r| r > 0) {
            out[hole] = Dim::Fixed(total / rest);
        }
    }
    out
}

fn matmul_output(a: &[Dim], b: &[Dim]) -> Option<Vec<Dim>> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (a_batch, m) = match a.len() {
        1 => (&a[..0], None),
        n => (&a[..n - 2], Some(a[n - 2].clone())),
    };
    let (b_batch, n) = match b.len() {
        1 => (&b[..0], None),
        len => (&b[..len - 2], Some(b[len - 1].clone())),
    };
    let mut out = broadcast(&[a_batch.to_vec(), b_batch.to_vec()])?;
    out.extend(m);
    out.extend(n);
    Some(out)
}

/// Numpy-style broadcasting of several shapes; `None` if they cannot match.
fn broadcast(shapes: &[Vec<Dim>]) -> Option<Vec<Dim>> {
    let rank = shapes.iter().map(Vec::len).max()?;
    let mut out = Vec::with_capacity(rank);
    for axis in 0..rank {
        let mut result = Dim::Fixed(1);
        for shape in shapes {
            let Some(dim) = (axis + shape.len()).checked_sub(rank).map(|i| &shape[i]) else {
                continue;
            };
            result = match (&result, dim) {
                (Dim::Fixed(1), d) => d.clone(),
                (r, Dim::Fixed(1)) => r.clone(),
                (Dim::Fixed(a), Dim::Fixed(b)) if a != b => return None,
                (r, d) if r == d => r.clone(),
                (Dim::Fixed(_), _) => result.clone(),
                (_, Dim::Fixed(_)) => dim.clone(),
                _ => Dim::Unknown,
            };
        }
        out.push(result);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        let a = vec![Dim::named("N"), Dim::Fixed(3), Dim::Fixed(1)];
        let b = vec![Dim::Fixed(4)];
        assert_eq!(broadcast(&[a, b]), Some(vec![Dim::named("N"), Dim::Fixed(3), Dim::Fixed(4)]));
        assert_eq!(broadcast(&[vec![Dim::Fixed(2)], vec![Dim::Fixed(3)]]), None);
    }

    #[test]
    fn reshape_resolves_zero_and_minus_one() {
        let input = [Dim::named("N"), Dim::Fixed(2), Dim::Fixed(3)];
        assert_eq!(reshape_output(Some(&input), &[0, -1]), vec![Dim::named("N"), Dim::Unknown]);
        let fixed = [Dim::Fixed(4), Dim::Fixed(2), Dim::Fixed(3)];
        assert_eq!(reshape_output(Some(&fixed), &[4, -1]), vec![Dim::Fixed(4), Dim::Fixed(6)]);
    }
}
