//! The head's files, through their contracts (`contracts::head`): weights
//! (safetensors) and metadata (JSON), the per-epoch metrics log (JSON lines)
//! and evaluation reports (JSON). Every file is written atomically.

use std::path::Path;

use contracts::head::{self as contract, DenseWeights};
use contracts::{Contract, ContractError, JsonLines};
use ndarray::{Array1, Array2};
use train_kit::EpochRecord;

use crate::artifact::TrainedHead;
use crate::model::{Activation, Dense, Mlp};

pub use contracts::head::{META_FILE, WEIGHTS_FILE};

/// Files are read and written through their contracts.
pub type IoError = ContractError;

/// The model's layers as stored.
pub fn dense_weights(model: &Mlp<f32>) -> Vec<DenseWeights> {
    model
        .layers()
        .iter()
        .map(|layer| DenseWeights {
            outputs: layer.outputs(),
            inputs: layer.inputs(),
            weight: layer.weight.as_standard_layout().iter().copied().collect(),
            bias: layer.bias.to_vec(),
        })
        .collect()
}

/// Writes the weights (see [`contracts::head::write_weights`]).
pub fn write_weights(path: &Path, model: &Mlp<f32>) -> Result<(), IoError> {
    contract::write_weights(path, &dense_weights(model), model.activation())
}

/// Reads weights written by [`write_weights`] into a model.
pub fn read_weights(path: &Path, activation: Activation) -> Result<Mlp<f32>, IoError> {
    mlp(path, contract::read_weights(path)?, activation)
}

fn mlp(path: &Path, layers: Vec<DenseWeights>, activation: Activation) -> Result<Mlp<f32>, IoError> {
    let layers = layers
        .into_iter()
        .map(|l| Dense {
            weight: Array2::from_shape_vec((l.outputs, l.inputs), l.weight).expect("length checked on reading"),
            bias: Array1::from_vec(l.bias),
        })
        .collect();
    Mlp::from_layers(layers, activation).map_err(|e| ContractError::invalid(path, e.to_string()))
}

/// Saves a head as `dir/head.safetensors` and `dir/head.json`, creating
/// `dir` if needed.
pub fn save(dir: &Path, head: &TrainedHead) -> Result<(), IoError> {
    write_weights(&dir.join(WEIGHTS_FILE), &head.model)?;
    contracts::write(&dir.join(META_FILE), &head.meta)
}

/// Loads a head saved by [`save`], checking that the JSON and the weights
/// agree.
pub fn load(dir: &Path) -> Result<TrainedHead, IoError> {
    let (meta, layers) = contract::read_head(dir)?;
    let model = mlp(&dir.join(WEIGHTS_FILE), layers, meta.activation)?;
    Ok(TrainedHead { model, meta })
}

/// Writes a report (for example a `train_kit::Evaluation`) as its contract's JSON.
pub fn write_report<V: Contract>(path: &Path, report: &V) -> Result<(), IoError> {
    contracts::write(path, report)
}

/// The per-epoch metrics log: one JSON object per line, flushed after each
/// epoch so a running job can be followed with `tail -f`.
pub type MetricsLog = JsonLines;

/// Reads a metrics log back (for reports and tests).
pub fn read_metrics_log(path: &Path) -> Result<Vec<EpochRecord>, IoError> {
    JsonLines::read_all(path)
}
