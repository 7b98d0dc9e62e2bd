//! A graph run as plain inference in the stock ONNX Runtime (1.32, through
//! `ort`): the frozen prefix in cached-prefix and prefix-as-inference modes,
//! and the exported model when it is checked and evaluated.

use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use onnx_graph::ModelProto;
use runtime::{ort, ModelSource, SessionOptions};

use crate::error::{DataError, ExportError, Result};

/// One session of a one-input, one-output f32 graph.
pub struct Inference {
    session: ort::session::Session,
    input: String,
    output: String,
}

impl Inference {
    /// `threads` intra-op threads (0: ONNX Runtime's choice, all cores).
    pub fn from_model(model: &ModelProto, threads: usize) -> Result<Inference> {
        Self::open(model, threads, ModelSource::Memory(&onnx_graph::encode_model(model)))
    }

    pub fn from_file(path: &Path, threads: usize) -> Result<Inference> {
        let model = onnx_graph::read_model(path)?;
        Self::open(&model, threads, ModelSource::File(path))
    }

    /// `model` is the graph `source` holds, read for its input and output names.
    fn open(model: &ModelProto, threads: usize, source: ModelSource<'_>) -> Result<Inference> {
        let input = match onnx_graph::inputs(model)?.as_slice() {
            [input] => input.name.clone(),
            other => return Err(ExportError::Inputs { count: other.len() }.into()),
        };
        let output = match onnx_graph::outputs(model)?.as_slice() {
            [output] => output.name.clone(),
            other => return Err(ExportError::Outputs { count: other.len() }.into()),
        };
        // No spin-waiting between runs: the training session (another ONNX
        // Runtime, in the same process) needs the cores right after.
        let options = SessionOptions::default().intra_op_spinning(false).intra_threads(threads);
        let session = runtime::open_session(&options, source)?;
        Ok(Inference { session, input, output })
    }

    /// The output for a batch of inputs.
    pub fn run(&mut self, inputs: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let dims: Vec<i64> = inputs.shape().iter().map(|&d| d as i64).collect();
        let data: Vec<f32> = inputs.as_standard_layout().iter().copied().collect();
        let value = ort::value::Tensor::from_array((dims, data))?;
        let outputs = self.session.run(ort::inputs![self.input.as_str() => value])?;
        let (shape, out) = outputs[self.output.as_str()].try_extract_tensor::<f32>()?;
        let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        ArrayD::from_shape_vec(IxDyn(&shape), out.to_vec())
            .map_err(|source| DataError::Shape { what: "an inference output", source }.into())
    }
}
