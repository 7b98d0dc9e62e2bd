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

use contracts::features::{CacheKey, Dtype};
use dataset::{Dataset, Split};
use feature_cache::{Index, Store};
use progress::Progress;

use crate::data::{Batch, BatchSource, Batches, EpochOrder, InMemory};
use crate::error::{DataError, Result, SelectionError, SetupError};
use crate::images::{ImageSource, StoredImage};
use crate::infer::Inference;
use crate::select::ParameterSplit;

pub use contracts::finetune::PrefixCacheStats;

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
        return Err(SetupError::EmptySuffix { tensor: tensor.to_owned() }.into());
    }
    let mut used: HashSet<&str> = HashSet::new();
    for node in suffix_nodes.iter().copied() {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if input != tensor
                && (prefix_made.contains(input.as_str()) || graph_inputs.contains(input.as_str()))
                && !initializer_names.contains(input.as_str())
            {
                return Err(SetupError::CrossesSplit {
                    node: node.name.clone(),
                    tensor: tensor.to_owned(),
                    input: input.clone(),
                }
                .into());
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

/// The latest split point among `candidates` (block input tensors, in any
/// order) with every trainable parameter after it: the longest frozen
/// prefix. `None` when no candidate qualifies (say, block 1 trains).
pub fn latest_frozen_split<'c>(
    model: &ModelProto,
    candidates: impl IntoIterator<Item = &'c str>,
    parameters: &ParameterSplit,
) -> Result<Option<(SplitGraph, ParameterSplit)>> {
    let graph = onnx_graph::graph(model)?;
    let position = |tensor: &str| graph.node.iter().position(|n| n.output.iter().any(|o| o == tensor));
    let mut ordered: Vec<(usize, &str)> =
        candidates.into_iter().filter_map(|t| position(t).map(|at| (at, t))).collect();
    ordered.sort_unstable_by(|a, b| b.cmp(a));
    for (_, tensor) in ordered {
        let split = split_at(model, tensor)?;
        if let Ok(restricted) = suffix_parameters(&split, parameters) {
            return Ok(Some((split, restricted)));
        }
    }
    Ok(None)
}

/// Checks that every trainable parameter lives in the suffix, and returns
/// the split restricted to the suffix's parameters.
pub fn suffix_parameters(split: &SplitGraph, parameters: &ParameterSplit) -> Result<ParameterSplit> {
    let in_suffix: HashSet<String> = onnx_graph::initializers(&split.suffix)?.into_iter().map(|t| t.name).collect();
    if let Some(outside) = parameters.trainable.iter().find(|p| !in_suffix.contains(*p)) {
        return Err(SelectionError::BeforeSplit { parameter: outside.clone(), tensor: split.tensor.clone() }.into());
    }
    Ok(ParameterSplit {
        trainable: parameters.trainable.clone(),
        frozen: parameters.frozen.iter().filter(|p| in_suffix.contains(*p)).cloned().collect(),
    })
}

/// Examples per prefix inference call.
pub const PREFIX_SLICE: usize = 8;

/// A source whose batches go through the frozen prefix on the way: the
/// suffix trains on them while the prefix runs as inference every step, so
/// augmentation still works.
pub struct PrefixSource<'a> {
    pub inner: &'a mut dyn BatchSource,
    pub runner: &'a mut Inference,
}

impl BatchSource for PrefixSource<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }

    /// Runs the prefix in slices of [`PREFIX_SLICE`] examples: as fast as
    /// whole training batches (see the features benchmark), with a quarter
    /// of the activation memory at batch 32.
    fn batch(&mut self, indices: &[usize], epoch: usize) -> Result<Batch> {
        let batch = self.inner.batch(indices, epoch)?;
        run_prefix(self.runner, batch)
    }

    fn batches(&mut self, order: EpochOrder, batch_size: usize) -> Batches<'_> {
        let PrefixSource { inner, runner } = self;
        Box::new(inner.batches(order, batch_size).map(move |batch| run_prefix(runner, batch?)))
    }
}

/// `batch` through the prefix, [`PREFIX_SLICE`] examples at a time.
fn run_prefix(runner: &mut Inference, batch: Batch) -> Result<Batch> {
    let parts = batch
        .inputs
        .axis_chunks_iter(ndarray::Axis(0), PREFIX_SLICE)
        .map(|slice| runner.run(&slice.to_owned()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Batch { inputs: concatenate(&parts)?, labels: batch.labels })
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
    let mut runner = Inference::from_model(prefix, threads)?;
    let indices: Vec<usize> = (0..source.len()).collect();
    let mut parts = Vec::new();
    let mut labels: Vec<i64> = Vec::with_capacity(indices.len());
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = source.batch(chunk, 0)?;
        parts.push(runner.run(&batch.inputs)?);
        labels.extend(batch.labels);
    }
    InMemory::new(concatenate(&parts)?, labels)
}

fn concatenate(parts: &[ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
    ndarray::concatenate(ndarray::Axis(0), &views)
        .map_err(|source| DataError::Shape { what: "prefix outputs change shape between batches", source }.into())
}

/// The feature-cache key for a prefix's activations: like the features
/// stage's key, with the prefix graph's bytes as the model's identity, so
/// activations are shared by every run (and dataset) with the same frozen
/// prefix and preprocessing. Stored flattened, f32 (the suffix must see
/// exactly what the prefix computed).
pub fn prefix_cache_key(model_name: &str, prefix: &ModelProto, preprocess_fingerprint: &str) -> Result<CacheKey> {
    let embedding_len = prefix_item_shape(prefix)?.iter().product();
    Ok(CacheKey {
        model: format!("{model_name}-prefix"),
        model_fingerprint: spec::sha256_hex(&onnx_graph::encode_model(prefix)),
        preprocess_fingerprint: preprocess_fingerprint.to_owned(),
        pooling: spec::Pooling::Flatten,
        dtype: Dtype::F32,
        embedding_len,
    })
}

/// The prefix's activations for every image of `split`, kept in `store`:
/// the missing ones are computed from the images streamed in stored order
/// (prepared by `preparer`, unaugmented), in batches committed to the
/// store segment by segment (so an interruption loses at most one batch).
/// Training then reads them back from the store per batch
/// ([`StoredActivations`]), so neither the images nor the activations are
/// held.
#[allow(clippy::too_many_arguments)]
pub fn cached_activations<'s>(
    store: &'s Store,
    dataset: &Dataset,
    split: Split,
    preparer: &ImageSource,
    runner: &mut Inference,
    item_shape: &[usize],
    batch_size: usize,
    progress: &dyn Progress,
) -> Result<(StoredActivations<'s>, PrefixCacheStats)> {
    let started = std::time::Instant::now();
    if item_shape.iter().product::<usize>() != store.key().embedding_len {
        return Err(SetupError::PrefixKey { shape: item_shape.to_vec(), len: store.key().embedding_len }.into());
    }
    let plain = preparer.without_augmentation();
    let rows = dataset.index(split)?;
    let index = store.scan()?;
    let missing = rows.iter().filter(|r| !index.contains(&r.content_id)).count();
    let stats = PrefixCacheStats { hits: rows.len() - missing, computed: missing, seconds: 0.0 };
    if missing > 0 {
        progress.start("frozen prefix", missing as u64);
        let batch_size = batch_size.max(1);
        let mut pending: Vec<StoredImage> = Vec::with_capacity(batch_size);
        let mut compute = |pending: &mut Vec<StoredImage>| -> Result<()> {
            let images: Vec<&StoredImage> = pending.iter().collect();
            let batch = plain.prepare_batch(&images, 0)?;
            let activations = runner.run(&batch.inputs)?;
            let n = activations.shape()[0];
            let flat = activations
                .into_shape_with_order((n, store.key().embedding_len))
                .map_err(|source| DataError::Shape { what: "prefix output does not match the cache key", source })?;
            let ids: Vec<String> = pending.drain(..).map(|image| image.content_id).collect();
            store.append(&ids, flat.view())?;
            progress.advance(ids.len() as u64);
            Ok(())
        };
        for records in dataset.batches(split, batch_size, true) {
            for record in records? {
                if !index.contains(&record.content_id) {
                    pending.push(StoredImage::from(record));
                    if pending.len() == batch_size {
                        compute(&mut pending)?;
                    }
                }
            }
        }
        if !pending.is_empty() {
            compute(&mut pending)?;
        }
        progress.finish();
    }
    let activations = StoredActivations {
        store,
        index: store.scan()?,
        ids: rows.iter().map(|r| r.content_id.clone()).collect(),
        labels: rows.iter().map(|r| i64::from(r.label_index)).collect(),
        item_shape: item_shape.to_vec(),
    };
    Ok((activations, PrefixCacheStats { seconds: started.elapsed().as_secs_f64(), ..stats }))
}

/// A split's prefix activations in the feature cache, read per batch: only
/// ids and labels are held.
pub struct StoredActivations<'s> {
    store: &'s Store,
    index: Index,
    ids: Vec<String>,
    labels: Vec<i64>,
    item_shape: Vec<usize>,
}

impl BatchSource for StoredActivations<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }

    fn batch(&mut self, indices: &[usize], _epoch: usize) -> Result<Batch> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.ids.len()) {
            return Err(DataError::Index { index: bad, len: self.ids.len() }.into());
        }
        let ids: Vec<&str> = indices.iter().map(|&i| self.ids[i].as_str()).collect();
        let flat = self.store.read(&self.index, &ids)?;
        let mut dims = vec![indices.len()];
        dims.extend_from_slice(&self.item_shape);
        let inputs = flat
            .into_shape_with_order(IxDyn(&dims))
            .map_err(|source| DataError::Shape { what: "prefix activations from the cache", source })?;
        Ok(Batch { inputs, labels: indices.iter().map(|&i| self.labels[i]).collect() })
    }
}

/// The shape of one example's prefix output (all but the batch axis),
/// which must be fixed to be cached.
pub fn prefix_item_shape(prefix: &ModelProto) -> Result<Vec<usize>> {
    let output = onnx_graph::outputs(prefix)?.remove(0);
    let dims = output.dims.clone().unwrap_or_default();
    let fixed: Option<Vec<usize>> = dims
        .iter()
        .skip(1)
        .map(|d| match d {
            shape::Dim::Fixed(n) if *n > 0 => Some(*n as usize),
            _ => None,
        })
        .collect();
    match fixed {
        Some(shape) if !shape.is_empty() => Ok(shape),
        _ => Err(SetupError::UnfixedPrefix { output: output.name.clone(), dims: format!("{dims:?}") }.into()),
    }
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

        let mut rng = train_kit::SplitMix64::new(3);
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
