//! `model.onnx` from every run, fine-tuned or not: the conv base the
//! features stage ran, its pooling, and the trained head composed into one
//! image → probabilities graph (the `compose` crate, as the fine-tune stage
//! does), with the preprocessing `predict` reads in its metadata.
//!
//! It is written only after a check in the stock ONNX Runtime: on a few
//! stored images, its probabilities must match the head's own on their
//! cached embeddings. A model that disagrees is an error, never a file.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use compose::{compose, ComposeOptions, DenseLayer, HeadInit};
use contracts::features::{Dtype, FeaturesInfo};
use dataset::{Dataset, Split};
use feature_cache::{Index, Store};
use head::TrainedHead;
use ndarray::{Array2, ArrayD, IxDyn};
use runtime::{ort, ModelSource, SessionOptions};

/// The file, in the head stage's output folder.
pub const MODEL_FILE: &str = "model.onnx";
/// Images the check runs (from the test split, else validation, else train).
const CHECKED_IMAGES: usize = 8;

/// What the check found.
pub struct Checked {
    pub path: PathBuf,
    pub images: usize,
    /// Largest |difference| of a probability, model.onnx vs the head.
    pub max_diff: f32,
}

/// Composes, checks and writes `out/model.onnx` for the head saved in `out`
/// (`index` is `store`'s scan).
pub fn export_model(
    info: &FeaturesInfo,
    dataset: &Dataset,
    store: &Store,
    index: &Index,
    head: &TrainedHead,
    out: &Path,
) -> Result<Checked> {
    let conv_base_path = &info.model.conv_base;
    let conv_base = onnx_graph::read_model(conv_base_path).with_context(|| {
        format!(
            "reading the conv base that features.json names ({}); if the model cache was cleared, run the features stage again",
            conv_base_path.display()
        )
    })?;
    // The weights as the head stage wrote them: the same file contract fine-tuning reads.
    let (meta, layers) = contracts::head::read_head(out)?;
    let spec = &info.model.spec;
    let options = ComposeOptions {
        pooling: info.pooling,
        feature_len: Some(info.embedding_len),
        activation: meta.activation,
        ..ComposeOptions::from_spec(spec)
    };
    let composed = compose(&conv_base, &HeadInit::Trained(DenseLayer::from_head(&layers)?), &options)?;
    let stored = Some(dataset.info().spec.stored_image());
    let metadata = spec::InferenceMetadata::for_model(spec, &meta.class_names, stored).to_props();
    let model = compose::inference_model(composed.inference, &metadata, "tl-vision head")?;

    let path = out.join(MODEL_FILE);
    let partial = atomic_file::partial_path(&path);
    onnx_graph::write_model(&model, &partial)?;
    let checked = check(&partial, info, dataset, store, index, head);
    match checked {
        Ok((images, max_diff)) => {
            std::fs::rename(&partial, &path).with_context(|| format!("renaming into {}", path.display()))?;
            Ok(Checked { path, images, max_diff })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(e)
        }
    }
}

/// Runs `model` in ONNX Runtime on the first stored images of a split and
/// compares with the head on their cached embeddings; returns how many
/// images and the largest difference.
fn check(
    model: &Path,
    info: &FeaturesInfo,
    dataset: &Dataset,
    store: &Store,
    index: &Index,
    head: &TrainedHead,
) -> Result<(usize, f32)> {
    let Some(split) = [Split::Test, Split::Validation, Split::Train].into_iter().find(|&s| dataset.rows(s) > 0) else {
        bail!("the dataset has no images to check {} on", model.display());
    };
    let records = match dataset.batches(split, CHECKED_IMAGES, true).next() {
        Some(batch) => batch?,
        None => bail!("the {split} split is empty"),
    };
    // Images the features stage rejected have no embedding to compare with.
    let records: Vec<_> = records.into_iter().filter(|r| index.rejection(&r.content_id).is_none()).collect();
    if records.is_empty() {
        bail!("the first images of the {split} split were all rejected by the features stage");
    }
    let spec = &info.model.spec;
    let per_image = imaging::preprocess::input_len(&spec.input);
    let mut inputs = vec![0f32; records.len() * per_image];
    for (record, out) in records.iter().zip(inputs.chunks_exact_mut(per_image)) {
        let size = (record.stored_width, record.stored_height);
        imaging::preprocess::preprocess_into(&record.pixels, size, &spec.preprocess, &spec.input, out)
            .with_context(|| format!("preparing {} for the check", record.path))?;
    }
    let dims = imaging::preprocess::batch_shape(&spec.input, records.len());
    let images = ArrayD::from_shape_vec(IxDyn(&dims), inputs)?;
    let from_onnx = run(model, &spec.input.name, images)?;

    let ids: Vec<&str> = records.iter().map(|r| r.content_id.as_str()).collect();
    let embeddings = store.read(index, &ids)?;
    let from_head = head.predict_proba(embeddings.view());
    let max_diff = from_onnx.iter().zip(&from_head).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    // f16 embeddings round each value to 11 bits; the head then sees
    // slightly other inputs than the graph computes.
    let tolerance = match info.dtype {
        Dtype::F16 => 2e-2,
        _ => 1e-4,
    };
    // f32::max skips NaN: a non-finite output is caught on its own.
    let finite = from_onnx.iter().all(|p| p.is_finite());
    if from_onnx.shape() != from_head.shape() || !finite || max_diff > tolerance {
        bail!(
            "{} disagrees with the head on {} {split} images: probabilities differ by up to {max_diff:e} \
             (tolerance {tolerance:e}); not written",
            model.display(),
            records.len()
        );
    }
    Ok((records.len(), max_diff))
}

fn run(model: &Path, input: &str, images: ArrayD<f32>) -> Result<Array2<f32>> {
    let mut session = runtime::open_session(&SessionOptions::default(), ModelSource::File(model))?;
    let tensor = ort::value::Tensor::from_array(images)?;
    let outputs = session.run(ort::inputs![input => tensor])?;
    let (shape, values) = outputs[compose::PROBABILITIES].try_extract_tensor::<f32>()?;
    let rows = shape.first().copied().unwrap_or(0).max(0) as usize;
    Ok(Array2::from_shape_vec((rows, values.len() / rows.max(1)), values.to_vec())?)
}
