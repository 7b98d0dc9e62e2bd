//! Cached-prefix mode: without augmentation, the frozen part of the conv
//! base (up to the first trainable block, e.g. VGG16 block 4's pool, 512×14×14)
//! gives the same output every epoch. Split the composed graph at that
//! tensor: the prefix runs once as plain inference in ONNX Runtime 1.32, and
//! only the suffix (block 5 + head) is trained, on the cached activations.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use onnx_graph::proto::{GraphProto, ModelProto};
use onnx_graph::shape;
use runtime::ort;

use crate::data::{BatchSource, InMemory};
use crate::error::{FinetuneError, Result};
use crate::select::ParameterSplit;

/// Metadata key on the suffix graph naming the tensor it starts at.
pub const META_SUFFIX_OF: &str = "finetune.suffix_input";

/// A graph split at one tensor.
#[derive(Clone, Debug)]
pub struct SplitGraph {
    /// Image in, `tensor` out (frozen; run as inference).
    pub prefix: ModelProto,
    /// `tensor` in, the original outputs out (trained).
    pub suffix: ModelProto,
    pub tensor: String,
}

/// Splits `model` at `tensor` (a model spec's `blocks.<name>.input`). The
/// suffix holds every node not needed to compute `tensor`; it may read
/// nothing from the prefix but `tensor` and no graph input (so skip
/// connections across the split are refused).
pub fn split_at(model: &ModelProto, tensor: &str) -> Result<SplitGraph> {
    let prefix = onnx_graph::cut_at(model, tensor)?;
    let graph = onnx_graph::graph(model)?;
    let needed = ancestors(graph, tensor);
    let prefix_made: HashSet<&str> =
        needed.iter().flat_map(|&i| graph.node[i].output.iter().map(String::as_str)).collect();
    let graph_inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    let initializer_names: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();

    let suffix_nodes: Vec<_> =
        graph.node.iter().enumerate().filter(|(i, _)| !needed.contains(i)).map(|(_, n)| n).collect();
    if suffix_nodes.is_empty() {
        return Err(FinetuneError::Config(format!("nothing comes after {tensor:?}: the suffix would be empty")));
    }
    let mut used: HashSet<&str> = HashSet::new();
    for node in suffix_nodes.iter().copied() {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if input != tensor
                && (prefix_made.contains(input.as_str()) || graph_inputs.contains(input.as_str()))
                && !initializer_names.contains(input.as_str())
            {
                return Err(FinetuneError::Config(format!(
                    "node {:?} after {tensor:?} reads {input:?} from before it; the graph cannot be split there",
                    node.name
                )));
            }
            used.insert(input.as_str());
        }
    }
    let suffix_input = onnx_graph::outputs(&prefix)?.remove(0);
    let input_info = shape::tensor_value_info(tensor, suffix_input.elem_type, suffix_input.dims.as_deref());
    let suffix_graph = GraphProto {
        node: suffix_nodes.into_iter().cloned().collect(),
        name: format!("{}-suffix", graph.name),
        initializer: graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect(),
        doc_string: graph.doc_string.clone(),
        input: vec![input_info],
        output: graph.output.clone(),
        value_info: graph.value_info.iter().filter(|v| used.contains(v.name.as_str())).cloned().collect(),
        ..Default::default()
    };
    let mut suffix = ModelProto { graph: Some(suffix_graph), ..model.clone() };
    onnx_graph::set_metadata(&mut suffix, META_SUFFIX_OF, tensor);
    Ok(SplitGraph { prefix, suffix, tensor: tensor.to_owned() })
}

/// Checks that every trainable parameter lives in the suffix, and returns
/// the split restricted to the suffix's parameters.
pub fn suffix_parameters(split: &SplitGraph, parameters: &ParameterSplit) -> Result<ParameterSplit> {
    let in_suffix: HashSet<String> = onnx_graph::initializers(&split.suffix)?.into_iter().map(|t| t.name).collect();
    if let Some(outside) = parameters.trainable.iter().find(|p| !in_suffix.contains(*p)) {
        return Err(FinetuneError::Selection(format!(
            "parameter {outside:?} trains but comes before {:?}: it cannot train on cached activations; \
             split earlier or freeze it",
            split.tensor
        )));
    }
    Ok(ParameterSplit {
        trainable: parameters.trainable.clone(),
        frozen: parameters.frozen.iter().filter(|p| in_suffix.contains(*p)).cloned().collect(),
    })
}

/// Runs the prefix (as plain inference in ONNX Runtime 1.32) over every
/// example of `source`, in index order and batches of `batch_size`, and
/// returns the activations with the same labels: a source for training
/// the suffix.
pub fn precompute(
    prefix: &ModelProto,
    source: &mut dyn BatchSource,
    batch_size: usize,
    threads: usize,
) -> Result<InMemory> {
    let environment = runtime::init_ort()?;
    let input_name = onnx_graph::inputs(prefix)?.remove(0).name;
    let output_name = onnx_graph::outputs(prefix)?.remove(0).name;
    let mut builder = ort::session::Session::builder(environment).map_err(FinetuneError::ort)?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(FinetuneError::ort)?;
    }
    let mut session = builder.commit_from_memory(&onnx_graph::encode_model(prefix)).map_err(FinetuneError::ort)?;

    let indices: Vec<usize> = (0..source.len()).collect();
    let mut values: Vec<f32> = Vec::new();
    let mut labels: Vec<i64> = Vec::with_capacity(indices.len());
    let mut item_shape: Option<Vec<usize>> = None;
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.batch(chunk, 0)?;
        let dims: Vec<i64> = batch.inputs.shape().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = batch.inputs.as_standard_layout().iter().copied().collect();
        let value = ort::value::Tensor::from_array((dims, data)).map_err(FinetuneError::ort)?;
        let outputs = session.run(ort::inputs![input_name.as_str() => value]).map_err(FinetuneError::ort)?;
        let (shape, out) = outputs[output_name.as_str()].try_extract_tensor::<f32>().map_err(FinetuneError::ort)?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        match &item_shape {
            None => item_shape = Some(shape[1..].to_vec()),
            Some(known) if known[..] != shape[1..] => {
                return Err(FinetuneError::Data(format!(
                    "prefix outputs change shape: {known:?} then {:?}",
                    &shape[1..]
                )))
            }
            Some(_) => {}
        }
        values.extend_from_slice(out);
        labels.extend(batch.labels);
    }
    let mut dims = vec![labels.len()];
    dims.extend(item_shape.unwrap_or_default());
    let inputs = ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|e| FinetuneError::Data(e.to_string()))?;
    InMemory::new(inputs, labels)
}

/// Writes the prefix to a file (for inspection or another runtime).
pub fn write_prefix(split: &SplitGraph, path: &Path) -> Result<()> {
    Ok(onnx_graph::write_model(&split.prefix, path)?)
}

/// The indices of the nodes `tensor` depends on.
fn ancestors(graph: &GraphProto, tensor: &str) -> HashSet<usize> {
    let producers: HashMap<&str, usize> =
        graph.node.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect();
    let mut needed = HashSet::new();
    let mut pending = vec![tensor];
    let mut seen = HashSet::new();
    while let Some(name) = pending.pop() {
        if !seen.insert(name) {
            continue;
        }
        if let Some(&index) = producers.get(name) {
            if needed.insert(index) {
                pending.extend(graph.node[index].input.iter().map(String::as_str).filter(|s| !s.is_empty()));
            }
        }
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;
    use onnx_graph::reference::{self, Tensor};
    use onnx_graph::vgg;

    #[test]
    fn prefix_then_suffix_equals_the_whole() {
        let model = vgg::tiny_vgg(4);
        let split = split_at(&model, vgg::BLOCK4_OUTPUT).unwrap();
        let suffix_inputs = onnx_graph::inputs(&split.suffix).unwrap();
        assert_eq!(suffix_inputs.len(), 1);
        assert_eq!(suffix_inputs[0].name, vgg::BLOCK4_OUTPUT);
        let params: Vec<String> =
            onnx_graph::initializers(&split.suffix).unwrap().into_iter().map(|t| t.name).collect();
        assert!(
            params.iter().all(|p| !p.starts_with("features.") || vgg::block_parameters(5).contains(p)),
            "{params:?}"
        );

        let mut rng = onnx_graph::rng::SeededRng::new(3);
        let images = Tensor::new(vec![2, 3, 32, 32], rng.uniform_vec(-1.0, 1.0, 2 * 3 * 32 * 32));
        let whole = reference::evaluate(&model, &[(vgg::INPUT_NAME, images.clone())], &[vgg::OUTPUT_NAME]).unwrap();
        let middle = reference::evaluate(&split.prefix, &[(vgg::INPUT_NAME, images)], &[vgg::BLOCK4_OUTPUT]).unwrap();
        let end = reference::evaluate(&split.suffix, &[(vgg::BLOCK4_OUTPUT, middle[0].clone())], &[vgg::OUTPUT_NAME])
            .unwrap();
        assert!(end[0].max_abs_diff(&whole[0]) < 1e-6);
    }

    #[test]
    fn trainable_parameters_before_the_split_are_refused() {
        let split = split_at(&vgg::tiny_vgg(4), vgg::BLOCK4_OUTPUT).unwrap();
        let parameters = ParameterSplit {
            trainable: vec!["features.21.weight".into()],
            frozen: vec!["features.0.weight".into(), "features.24.weight".into()],
        };
        let err = suffix_parameters(&split, &parameters).unwrap_err();
        assert!(err.to_string().contains("features.21.weight"), "{err}");
        let ok = ParameterSplit { trainable: vec!["features.24.weight".into()], ..parameters };
        let restricted = suffix_parameters(&split, &ok).unwrap();
        assert_eq!(restricted.frozen, ["features.24.weight"]);
    }
}
