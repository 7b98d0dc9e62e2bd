//! The fine-tuned model for users: the eval graph with a checkpoint's
//! weights (`export_model_for_inferencing`), a softmax appended, unused
//! opset imports dropped, and metadata saying how to preprocess images;
//! then checked in the stock ONNX Runtime 1.32 (`runtime::init_ort`, the
//! `ort` crate), not in Python.

use std::collections::BTreeSet;
use std::path::Path;

use ndarray::{Array2, ArrayD};
use onnx_graph::ModelProto;
use runtime::ort;

use crate::artifacts::Artifacts;
use crate::compose::{append_softmax, PROBABILITIES};
use crate::error::{FinetuneError, Result};
use crate::ort_training::{OrtTraining, SessionConfig};
use crate::train::partial_path;

/// Metadata keys of the exported model.
pub const META_PREPROCESS: &str = "preprocess";
pub const META_INPUT: &str = "input";
pub const META_PREPROCESS_FINGERPRINT: &str = "preprocess_fingerprint";
pub const META_CLASS_NAMES: &str = "class_names";
pub const META_MODEL: &str = "model";
pub const META_WEIGHTS_NOTE: &str = "weights_note";
pub const META_OUTPUT: &str = "output";

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
    let logits_model = partial_path(&out.with_extension("logits.onnx"));
    session.export_model_for_inferencing(&logits_model, &[&artifacts.manifest.logits])?;
    let read = onnx_graph::read_model(&logits_model);
    let _ = std::fs::remove_file(&logits_model);
    let mut model = read?;
    append_softmax(&mut model, &artifacts.manifest.logits, PROBABILITIES)?;
    drop_unused_opsets(&mut model)?;
    onnx_graph::set_metadata(&mut model, META_OUTPUT, format!("{PROBABILITIES}: softmax over the classes"));
    for (key, value) in metadata {
        onnx_graph::set_metadata(&mut model, key, value.as_str());
    }
    model.producer_name = "tl-vision finetune".to_owned();
    model.producer_version = env!("CARGO_PKG_VERSION").to_owned();
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(FinetuneError::io("cannot create", parent))?;
    }
    onnx_graph::write_model(&model, out)?;
    Ok(model)
}

/// Metadata describing how images must be prepared for the model (the model
/// spec's input and preprocessing, as JSON), its classes (in label order),
/// and where the weights came from.
pub fn preprocessing_metadata(model: &spec::ModelSpec, class_names: &[String]) -> Vec<(String, String)> {
    vec![
        (META_MODEL.to_owned(), model.name.clone()),
        (META_INPUT.to_owned(), json(&model.input)),
        (META_PREPROCESS.to_owned(), json(&model.preprocess)),
        (META_PREPROCESS_FINGERPRINT.to_owned(), model.preprocess_fingerprint().0),
        (META_CLASS_NAMES.to_owned(), json(class_names)),
        (
            META_WEIGHTS_NOTE.to_owned(),
            if model.source.is_pretrained() {
                "conv base: pretrained weights, fine-tuned".to_owned()
            } else {
                "conv base: RANDOM generated weights (not pretrained), fine-tuned".to_owned()
            },
        ),
    ]
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> String {
    serde_json::to_string(value).expect("specs serialise")
}

/// Runs an exported model in the stock ONNX Runtime (1.32, through
/// `runtime::init_ort`) on `inputs` and returns its probabilities
/// `[n, classes]`.
pub fn run_inference(model: &Path, inputs: ArrayD<f32>, threads: usize) -> Result<Array2<f32>> {
    let environment = runtime::init_ort()?;
    let graph = onnx_graph::read_model(model)?;
    let input_name = match onnx_graph::inputs(&graph)?.as_slice() {
        [input] => input.name.clone(),
        other => return Err(FinetuneError::Export(format!("the model has {} inputs, expected one", other.len()))),
    };
    let output_name = match onnx_graph::outputs(&graph)?.as_slice() {
        [output] => output.name.clone(),
        other => return Err(FinetuneError::Export(format!("the model has {} outputs, expected one", other.len()))),
    };
    let mut builder = ort::session::Session::builder(environment).map_err(FinetuneError::ort)?;
    if threads > 0 {
        builder = builder.with_intra_threads(threads).map_err(FinetuneError::ort)?;
    }
    let mut session = builder.commit_from_file(model).map_err(FinetuneError::ort)?;
    let dims: Vec<i64> = inputs.shape().iter().map(|&d| d as i64).collect();
    let data = inputs.as_standard_layout().iter().copied().collect::<Vec<f32>>();
    let value = ort::value::Tensor::from_array((dims, data)).map_err(FinetuneError::ort)?;
    let outputs = session.run(ort::inputs![input_name.as_str() => value]).map_err(FinetuneError::ort)?;
    let (shape, values) = outputs[output_name.as_str()].try_extract_tensor::<f32>().map_err(FinetuneError::ort)?;
    match **shape {
        [rows, classes] => Array2::from_shape_vec((rows as usize, classes as usize), values.to_vec())
            .map_err(|e| FinetuneError::Export(e.to_string())),
        _ => Err(FinetuneError::Export(format!("the output has shape {shape:?}, expected [n, classes]"))),
    }
}

/// Runs the exported model in ONNX Runtime 1.32 on `sample` and checks that
/// it gives one finite probability row per input, each summing to 1.
/// Returns the probabilities.
pub fn verify_inference_model(model: &Path, sample: ArrayD<f32>) -> Result<Array2<f32>> {
    let rows = sample.shape().first().copied().unwrap_or(0);
    let probabilities = run_inference(model, sample, 0)?;
    if probabilities.nrows() != rows {
        return Err(FinetuneError::Export(format!("{} rows out for {rows} inputs", probabilities.nrows())));
    }
    for (i, row) in probabilities.outer_iter().enumerate() {
        let sum: f32 = row.sum();
        if row.iter().any(|p| !p.is_finite() || *p < 0.0) || (sum - 1.0).abs() > 1e-4 {
            return Err(FinetuneError::Export(format!("row {i} is not a probability distribution: {row}")));
        }
    }
    Ok(probabilities)
}

/// The training graphs import many domains (training, preview, nchwc,
/// aten...); an inference model needs only those its nodes use.
fn drop_unused_opsets(model: &mut ModelProto) -> Result<()> {
    let used: BTreeSet<String> = onnx_graph::graph(model)?.node.iter().map(|n| n.domain.clone()).collect();
    model.opset_import.retain(|o| o.domain.is_empty() || o.domain == "ai.onnx" || used.contains(&o.domain));
    Ok(())
}
