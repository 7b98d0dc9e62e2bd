//! Graph surgery: cut at a tensor, expose or rename tensors, free input
//! dims; and inspection of inputs, outputs and initializers.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use crate::shape::{self, tensor_value_info, Dim};
use crate::{graph, graph_mut, set_metadata, tensor, GraphError};

/// Metadata key recording the tensor a model was cut at.
pub const META_CUT_AT: &str = "cut_at";

/// A graph input, output or initializer: name, element type, dims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSummary {
    pub name: String,
    /// One of [`data_type`](crate::proto::data_type).
    pub elem_type: i32,
    /// `None` when the rank is unknown.
    pub dims: Option<Vec<Dim>>,
}

/// Returns a model whose only output is `tensor`: the nodes it depends on,
/// and the inputs and initializers they use; everything else is dropped.
/// This is "include_top=False" for an ONNX file.
///
/// The new output's type and shape come from shape inference or from the
/// value infos the graph already has; dims that cannot be told are left
/// unknown.
pub fn cut_at(model: &ModelProto, tensor: &str) -> Result<ModelProto, GraphError> {
    let source = graph(model)?;
    let output = describe(source, tensor)?;

    let producers = producers(source);
    let mut needed_nodes = BTreeSet::new();
    let mut used_names: HashSet<&str> = HashSet::new();
    let mut pending = vec![tensor];
    while let Some(name) = pending.pop() {
        if name.is_empty() || !used_names.insert(name) {
            continue;
        }
        if let Some(&index) = producers.get(name) {
            if needed_nodes.insert(index) {
                pending.extend(node_inputs(&source.node[index]));
            }
        }
    }
    let used = |name: &str| used_names.contains(name);

    let cut = GraphProto {
        node: needed_nodes.iter().map(|&i| source.node[i].clone()).collect(),
        name: source.name.clone(),
        initializer: filtered(&source.initializer, |t| used(&t.name)),
        sparse_initializer: filtered(&source.sparse_initializer, |t| t.values.as_ref().is_some_and(|v| used(&v.name))),
        doc_string: source.doc_string.clone(),
        input: filtered(&source.input, |v| used(&v.name)),
        output: vec![output],
        value_info: filtered(&source.value_info, |v| used(&v.name) && v.name != tensor),
        quantization_annotation: filtered(&source.quantization_annotation, |a| used(&a.tensor_name)),
        metadata_props: source.metadata_props.clone(),
    };
    let mut model = ModelProto { graph: Some(cut), ..clone_without_graph(model) };
    set_metadata(&mut model, META_CUT_AT, tensor);
    Ok(model)
}

/// Adds an intermediate tensor to the graph outputs (keeping the existing
/// ones), so a runtime returns it too. Does nothing if it is an output
/// already.
pub fn expose_output(model: &mut ModelProto, tensor: &str) -> Result<(), GraphError> {
    let graph = graph_mut(model)?;
    if graph.output.iter().any(|o| o.name == tensor) {
        return Ok(());
    }
    let output = describe(graph, tensor)?;
    graph.output.push(output);
    Ok(())
}

/// Makes some dims of a graph input free: each `(axis, name)` replaces that
/// axis's size with the symbol `name`. For the spatial dims of an NCHW
/// input pass axes 2 and 3; of an NHWC input, 1 and 2.
///
/// Intermediate shape hints (`value_info`) are dropped since they may no
/// longer hold; the outputs' dims are inferred again, and those that cannot
/// be inferred become unknown.
pub fn free_input_dims(model: &mut ModelProto, input: &str, axes: &[(usize, &str)]) -> Result<(), GraphError> {
    let graph = graph_mut(model)?;
    let value_info =
        graph.input.iter_mut().find(|v| v.name == input).ok_or_else(|| GraphError::UnknownTensor(input.to_owned()))?;
    let mut dims = shape::tensor_info(value_info)
        .and_then(|info| info.dims)
        .ok_or_else(|| GraphError::Invalid(format!("input {input:?} has no known rank")))?;
    for &(axis, name) in axes {
        let rank = dims.len();
        let dim = dims
            .get_mut(axis)
            .ok_or_else(|| GraphError::Invalid(format!("input {input:?} has rank {rank}, no axis {axis}")))?;
        *dim = Dim::named(name);
    }
    shape::set_dims(value_info, Some(&dims));

    graph.value_info.clear();
    let inferred = shape::infer(graph);
    for output in &mut graph.output {
        let old_rank = shape::tensor_info(output).and_then(|info| info.dims.map(|d| d.len()));
        let new_dims = inferred
            .get(&output.name)
            .and_then(|info| info.dims.clone())
            .or_else(|| old_rank.map(|rank| vec![Dim::Unknown; rank]));
        shape::set_dims(output, new_dims.as_deref());
    }
    Ok(())
}

/// Renames a tensor everywhere: node inputs and outputs (subgraphs
/// included), graph inputs, outputs, value infos and initializers.
pub fn rename_tensor(model: &mut ModelProto, old: &str, new: &str) -> Result<(), GraphError> {
    let graph = graph_mut(model)?;
    let names = tensor_names(graph);
    if !names.contains(old) {
        return Err(GraphError::UnknownTensor(old.to_owned()));
    }
    if names.contains(new) {
        return Err(GraphError::DuplicateName(new.to_owned()));
    }
    rename_in_graph(graph, old, new);
    Ok(())
}

/// The graph inputs that callers feed (initializers listed as inputs, as
/// IR versions before 4 did, are left out).
pub fn inputs(model: &ModelProto) -> Result<Vec<TensorSummary>, GraphError> {
    let graph = graph(model)?;
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    Ok(graph.input.iter().filter(|v| !initializers.contains(v.name.as_str())).map(summarize).collect())
}

/// The graph outputs.
pub fn outputs(model: &ModelProto) -> Result<Vec<TensorSummary>, GraphError> {
    Ok(graph(model)?.output.iter().map(summarize).collect())
}

/// The initializers (weights), with their data types and dims, in graph order.
pub fn initializers(model: &ModelProto) -> Result<Vec<TensorSummary>, GraphError> {
    Ok(graph(model)?
        .initializer
        .iter()
        .map(|t| TensorSummary {
            name: t.name.clone(),
            elem_type: t.data_type,
            dims: Some(t.dims.iter().map(|&d| Dim::Fixed(d)).collect()),
        })
        .collect())
}

/// An f32 initializer's values, in row-major order.
pub fn initializer_f32(model: &ModelProto, name: &str) -> Result<Vec<f32>, GraphError> {
    let init = graph(model)?
        .initializer
        .iter()
        .find(|t| t.name == name)
        .ok_or_else(|| GraphError::UnknownInitializer(name.to_owned()))?;
    tensor::f32_values(init)
}

/// Replaces an f32 initializer's values, keeping its name and dims.
pub fn set_initializer_f32(model: &mut ModelProto, name: &str, values: &[f32]) -> Result<(), GraphError> {
    let init = graph_mut(model)?
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .ok_or_else(|| GraphError::UnknownInitializer(name.to_owned()))?;
    if tensor::element_count(&init.dims) != values.len() {
        return Err(GraphError::Invalid(format!(
            "initializer {name:?} has dims {:?}; got {} values",
            init.dims,
            values.len()
        )));
    }
    *init = tensor::f32_tensor(name, &init.dims.clone(), values);
    Ok(())
}

/// A copy of everything but the graph (the graph is what edits replace, and
/// it can hold hundreds of megabytes of weights not worth copying).
fn clone_without_graph(model: &ModelProto) -> ModelProto {
    ModelProto {
        ir_version: model.ir_version,
        opset_import: model.opset_import.clone(),
        producer_name: model.producer_name.clone(),
        producer_version: model.producer_version.clone(),
        domain: model.domain.clone(),
        model_version: model.model_version,
        doc_string: model.doc_string.clone(),
        graph: None,
        metadata_props: model.metadata_props.clone(),
        training_info: model.training_info.clone(),
        functions: model.functions.clone(),
    }
}

/// A value info for `tensor`: inferred, or else as declared in the graph.
fn describe(graph: &GraphProto, tensor: &str) -> Result<ValueInfoProto, GraphError> {
    if !tensor_names(graph).contains(tensor) {
        return Err(GraphError::UnknownTensor(tensor.to_owned()));
    }
    let info = shape::infer(graph)
        .remove(tensor)
        .or_else(|| {
            let declared = graph.output.iter().find(|o| o.name == tensor)?;
            shape::tensor_info(declared)
        })
        .ok_or_else(|| {
            GraphError::Unsupported(format!(
                "cannot tell the element type of {tensor:?}: no value info for it, \
                 and shape inference does not know the op that makes it"
            ))
        })?;
    Ok(tensor_value_info(tensor, info.elem_type, info.dims.as_deref()))
}

fn summarize(value_info: &ValueInfoProto) -> TensorSummary {
    let info = shape::tensor_info(value_info);
    TensorSummary {
        name: value_info.name.clone(),
        elem_type: info.as_ref().map_or(0, |i| i.elem_type),
        dims: info.and_then(|i| i.dims),
    }
}

fn filtered<T: Clone>(items: &[T], keep: impl Fn(&T) -> bool) -> Vec<T> {
    items.iter().filter(|item| keep(item)).cloned().collect()
}

/// Which node makes each tensor.
fn producers(graph: &GraphProto) -> HashMap<&str, usize> {
    let mut producers = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            producers.insert(output.as_str(), index);
        }
    }
    producers
}

/// The names a node reads, including those its subgraphs (If, Loop, Scan
/// bodies) read from the enclosing graph. Names a subgraph makes itself are
/// included too; they are harmless, since no outer node makes them.
fn node_inputs(node: &NodeProto) -> Vec<&str> {
    let mut names: Vec<&str> = node.input.iter().map(String::as_str).collect();
    for attribute in &node.attribute {
        let subgraphs = attribute.g.iter().map(|g| g.as_ref()).chain(&attribute.graphs);
        for subgraph in subgraphs {
            names.extend(subgraph.node.iter().flat_map(node_inputs));
            names.extend(subgraph.output.iter().map(|o| o.name.as_str()));
        }
    }
    names
}

/// Every tensor name the graph mentions.
pub fn tensor_names(graph: &GraphProto) -> HashSet<&str> {
    let mut names = HashSet::new();
    names.extend(graph.input.iter().map(|v| v.name.as_str()));
    names.extend(graph.output.iter().map(|v| v.name.as_str()));
    names.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    for node in &graph.node {
        names.extend(node.input.iter().chain(&node.output).map(String::as_str));
    }
    names.remove("");
    names
}

fn rename_in_graph(graph: &mut GraphProto, old: &str, new: &str) {
    let rename = |name: &mut String| {
        if name == old {
            *name = new.to_owned();
        }
    };
    for node in &mut graph.node {
        node.input.iter_mut().chain(node.output.iter_mut()).for_each(rename);
        for attribute in &mut node.attribute {
            if let Some(subgraph) = attribute.g.as_mut() {
                rename_in_graph(subgraph, old, new);
            }
            for subgraph in &mut attribute.graphs {
                rename_in_graph(subgraph, old, new);
            }
        }
    }
    for value_info in graph.input.iter_mut().chain(&mut graph.output).chain(&mut graph.value_info) {
        rename(&mut value_info.name);
    }
    graph.initializer.iter_mut().for_each(|t| rename(&mut t.name));
    for sparse in &mut graph.sparse_initializer {
        if let Some(values) = sparse.values.as_mut() {
            rename(&mut values.name);
        }
    }
    for annotation in &mut graph.quantization_annotation {
        rename(&mut annotation.tensor_name);
    }
}
