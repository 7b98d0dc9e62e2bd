//! The fine-tuned model for users: the eval graph with a checkpoint's
//! weights (`export_model_for_inferencing`), a softmax appended, unused
//! opset imports dropped, and metadata saying how to preprocess images;
//! then checked in the stock ONNX Runtime 1.32 (`runtime::init_ort`, the
//! `ort` crate), not in Python.

use std::path::Path;

use ndarray::{Array2, ArrayD};
use onnx_graph::ModelProto;

use crate::artifacts::Artifacts;
use crate::error::{ExportError, FinetuneError, Result};
use crate::infer::Inference;
use crate::ort_training::{OrtTraining, SessionConfig};
use compose::{append_softmax, inference_model, PROBABILITIES};

/// Exports `checkpoint`'s weights as an inference model at `out`: image in,
/// [`PROBABILITIES`] out, with `metadata` added to the model's
/// `metadata_props`. Written atomically.
pub fn export_inference_model(
    ort: &OrtTraining,
    artifacts: &Artifacts,
    checkpoint: &Path,
    out: &Path,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let session = ort.open(&artifacts.files(), checkpoint, SessionConfig::default(), false)?;
    let logits_model = atomic_file::partial_path(&out.with_extension("logits.onnx"));
    session.export_model_for_inferencing(&logits_model, &[&artifacts.manifest.logits])?;
    let read = onnx_graph::read_model(&logits_model);
    let _ = std::fs::remove_file(&logits_model);
    let mut model = read?;
    append_softmax(&mut model, &artifacts.manifest.logits, PROBABILITIES)?;
    write_with_metadata(model, out, metadata)
}

/// Exports the full inference model (`inference`: image in, probabilities
/// out, e.g. [`crate::Composed::inference`]) with the weights of
/// `checkpoint`, which may cover only part of it: the suffix trained in
/// cached-prefix mode. Every parameter in the checkpoint must be an
/// initializer of `inference`; the others keep their values.
pub fn export_full_model(
    ort: &OrtTraining,
    artifacts: &Artifacts,
    checkpoint: &Path,
    inference: &ModelProto,
    out: &Path,
    metadata: &[(String, String)],
) -> Result<ModelProto> {
    let session = ort.open(&artifacts.files(), checkpoint, SessionConfig::default(), false)?;
    let mut model = inference.clone();
    for (name, _) in session.parameters()? {
        let values = session.parameter(&name)?;
        onnx_graph::set_initializer_f32(&mut model, &name, &values)
            .map_err(|source| ExportError::Parameter { name: name.clone(), source })?;
    }
    write_with_metadata(model, out, metadata)
}

fn write_with_metadata(model: ModelProto, out: &Path, metadata: &[(String, String)]) -> Result<ModelProto> {
    let model = inference_model(model, metadata, "tl-vision finetune")?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(FinetuneError::io("cannot create", parent))?;
    }
    onnx_graph::write_model(&model, out)?;
    Ok(model)
}

/// Metadata describing how images must be prepared for the model (the model
/// spec's input and preprocessing, and how the dataset stored its images),
/// its classes (in label order), and where the weights came from: the
/// [`spec::InferenceMetadata`] contract that `predict` reads.
pub fn preprocessing_metadata(
    model: &spec::ModelSpec,
    class_names: &[String],
    stored: Option<spec::StoredImage>,
) -> Vec<(String, String)> {
    spec::InferenceMetadata::for_model(model, class_names, stored).to_props()
}

/// Runs an exported model in the stock ONNX Runtime (1.32, through
/// `runtime::init_ort`) on `inputs` and returns its probabilities
/// `[n, classes]`.
pub fn run_inference(model: &Path, inputs: ArrayD<f32>, threads: usize) -> Result<Array2<f32>> {
    let probabilities = Inference::from_file(model, threads)?.run(&inputs)?;
    let shape = probabilities.shape().to_vec();
    probabilities.into_dimensionality::<ndarray::Ix2>().map_err(|_| ExportError::OutputShape { shape }.into())
}

/// Runs the exported model in ONNX Runtime 1.32 on `sample` and checks that
/// it gives one finite probability row per input, each summing to 1.
/// Returns the probabilities.
pub fn verify_inference_model(model: &Path, sample: ArrayD<f32>) -> Result<Array2<f32>> {
    let rows = sample.shape().first().copied().unwrap_or(0);
    let probabilities = run_inference(model, sample, 0)?;
    if probabilities.nrows() != rows {
        return Err(ExportError::Rows { rows: probabilities.nrows(), inputs: rows }.into());
    }
    for (i, row) in probabilities.outer_iter().enumerate() {
        let sum: f32 = row.sum();
        if row.iter().any(|p| !p.is_finite() || *p < 0.0) || (sum - 1.0).abs() > 1e-4 {
            return Err(ExportError::NotProbabilities { row: i, values: row.to_string() }.into());
        }
    }
    Ok(probabilities)
}
