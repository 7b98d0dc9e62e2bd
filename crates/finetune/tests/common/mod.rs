//! What the training tests share: the training API, one thread, and the
//! arithmetic they check results with.

use std::path::Path;

use finetune::artifacts::{ensure_artifacts, ArtifactRequest, Artifacts};
use finetune::{Loss, OptimizerKind, OrtTraining, ParameterSplit, SessionConfig};
use ndarray::{Array2, ArrayBase, Data, Ix2};

/// One thread: results independent of the machine's load, and the two
/// cores are shared.
pub const ONE_THREAD: SessionConfig = SessionConfig { threads: 1, deterministic: true };

pub fn ort() -> &'static OrtTraining {
    let venv = runtime::ensure_training_venv()
        .unwrap_or_else(|e| panic!("the training venv is needed (CPython 3.11 with onnxruntime-training 1.19.2): {e}"));
    OrtTraining::init(&venv).unwrap_or_else(|e| panic!("{e}"))
}

/// The artifacts for training `split` of `model` with cross-entropy and
/// AdamW, generated under `root` (or reused).
pub fn artifacts_for(root: &Path, model: &onnx_graph::ModelProto, split: &ParameterSplit) -> Artifacts {
    let request = ArtifactRequest { model, split, loss: Loss::CrossEntropy, optimizer: OptimizerKind::AdamW };
    ensure_artifacts(ort(), root, &request).unwrap_or_else(|e| panic!("{e}"))
}

/// Softmax of each row, by hand.
pub fn softmax_rows(logits: &Array2<f32>) -> Array2<f32> {
    let mut out = logits.clone();
    for mut row in out.outer_iter_mut() {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row.mapv_inplace(|v| v / sum);
    }
    out
}

/// Largest |a - b| of two matrices of one shape.
pub fn max_abs_diff<S: Data<Elem = f32>, T: Data<Elem = f32>>(a: &ArrayBase<S, Ix2>, b: &ArrayBase<T, Ix2>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}
