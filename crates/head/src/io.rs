//! Files: the head's weights (safetensors) and metadata (JSON), the
//! per-epoch metrics log (JSON lines) and evaluation reports (JSON).
//!
//! Every file is written to `<name>.partial` and renamed into place, so a
//! crash never leaves a half-written file under the real name.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{Array1, Array2};
use safetensors::{Dtype, SafeTensors};
use serde::Serialize;

use crate::artifact::{HeadMeta, TrainedHead, FORMAT, WEIGHT_LAYOUT};
use crate::model::{Activation, Dense, Mlp};
use crate::train::EpochRecord;

/// File name of the weights inside a head directory.
pub const WEIGHTS_FILE: &str = "head.safetensors";
/// File name of the metadata inside a head directory.
pub const META_FILE: &str = "head.json";

/// A file that could not be written or read back.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid safetensors: {source}")]
    Safetensors {
        path: PathBuf,
        #[source]
        source: safetensors::SafeTensorError,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IoError + '_ {
    move |source| IoError::Io { path: path.to_path_buf(), source }
}

fn format_err(path: &Path, message: impl Into<String>) -> IoError {
    IoError::Format { path: path.to_path_buf(), message: message.into() }
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), IoError> {
    atomic_file::write(path, bytes).map_err(|e| IoError::Io { path: e.path, source: e.source })
}

fn write_json<V: Serialize>(path: &Path, value: &V) -> Result<(), IoError> {
    let mut text =
        serde_json::to_vec_pretty(value).map_err(|source| IoError::Json { path: path.to_path_buf(), source })?;
    text.push(b'\n');
    write_atomically(path, &text)
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the weights: `dense_{i}.weight` (`[out, in]`, F32) and
/// `dense_{i}.bias` (`[out]`, F32) for layer `i` from the input side. The
/// safetensors header metadata records the format, layout and activation.
pub fn write_weights(path: &Path, model: &Mlp<f32>) -> Result<(), IoError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in model.layers().iter().enumerate() {
        let weight = layer.weight.as_standard_layout();
        owned.push((
            format!("dense_{i}.weight"),
            vec![layer.outputs(), layer.inputs()],
            le_bytes(weight.as_slice().expect("standard layout")),
        ));
        owned.push((format!("dense_{i}.bias"), vec![layer.outputs()], le_bytes(&layer.bias.to_vec())));
    }
    let views = owned
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data");
            (name.clone(), view)
        })
        .collect::<Vec<_>>();
    let header: HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("weight_layout".to_string(), WEIGHT_LAYOUT.to_string()),
        (
            "activation".to_string(),
            serde_json::to_value(model.activation()).expect("serialisable").as_str().expect("a string").to_string(),
        ),
        ("layers".to_string(), model.layers().len().to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(header))
        .map_err(|source| IoError::Safetensors { path: path.to_path_buf(), source })?;
    write_atomically(path, &sorted_header(bytes))
}

/// The same file with its JSON header's keys sorted: `safetensors` writes
/// the metadata map in `HashMap` order, which changes from run to run, and
/// the same weights must give the same bytes. The header keeps its length
/// (same keys and values), so the data offsets stay valid.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = &bytes[8..8 + len];
    let value: serde_json::Value = serde_json::from_slice(header.trim_ascii_end()).expect("safetensors wrote JSON");
    let mut sorted = serde_json::to_vec(&value).expect("a JSON value serialises");
    sorted.resize(len, b' ');
    debug_assert_eq!(sorted.len(), len, "same keys and values, same length");
    [&bytes[..8], &sorted, &bytes[8 + len..]].concat()
}

/// Reads weights written by [`write_weights`] (or by any tool that follows
/// the same names, dtype and layout).
pub fn read_weights(path: &Path, activation: Activation) -> Result<Mlp<f32>, IoError> {
    let bytes = fs::read(path).map_err(io_err(path))?;
    let st_err = |source| IoError::Safetensors { path: path.to_path_buf(), source };
    let tensors = SafeTensors::deserialize(&bytes).map_err(st_err)?;
    let read = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f32>), IoError> {
        let t = tensors.tensor(name).map_err(|_| format_err(path, format!("missing tensor {name}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(format_err(path, format!("{name} is {:?}, expected F32", t.dtype())));
        }
        if t.shape().len() != rank {
            return Err(format_err(path, format!("{name} has shape {:?}, expected rank {rank}", t.shape())));
        }
        let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((t.shape().to_vec(), values))
    };
    let mut layers = Vec::new();
    while tensors.names().contains(&format!("dense_{}.weight", layers.len()).as_str()) {
        let i = layers.len();
        let (wshape, w) = read(&format!("dense_{i}.weight"), 2)?;
        let (_, b) = read(&format!("dense_{i}.bias"), 1)?;
        let weight = Array2::from_shape_vec((wshape[0], wshape[1]), w).expect("length checked by safetensors");
        layers.push(Dense { weight, bias: Array1::from_vec(b) });
    }
    if layers.len() * 2 != tensors.len() {
        return Err(format_err(
            path,
            format!(
                "expected only dense_0..dense_{} weights and biases, found {:?}",
                layers.len().saturating_sub(1),
                tensors.names()
            ),
        ));
    }
    Mlp::from_layers(layers, activation).map_err(|e| format_err(path, e.to_string()))
}

/// Saves a head as `dir/head.safetensors` and `dir/head.json`, creating
/// `dir` if needed.
pub fn save(dir: &Path, head: &TrainedHead) -> Result<(), IoError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    write_weights(&dir.join(WEIGHTS_FILE), &head.model)?;
    write_json(&dir.join(META_FILE), &head.meta)
}

/// Loads a head saved by [`save`], checking that the JSON and the weights
/// agree.
pub fn load(dir: &Path) -> Result<TrainedHead, IoError> {
    let meta_path = dir.join(META_FILE);
    let text = fs::read(&meta_path).map_err(io_err(&meta_path))?;
    let meta: HeadMeta =
        serde_json::from_slice(&text).map_err(|source| IoError::Json { path: meta_path.clone(), source })?;
    if meta.format != FORMAT || meta.weight_layout != WEIGHT_LAYOUT {
        return Err(format_err(
            &meta_path,
            format!(
                "format {:?} / layout {:?}, this build reads {FORMAT:?} / {WEIGHT_LAYOUT:?}",
                meta.format, meta.weight_layout
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let model = read_weights(&weights_path, meta.activation)?;
    if model.sizes() != meta.layer_sizes {
        return Err(format_err(
            &weights_path,
            format!("layer sizes {:?} differ from head.json's {:?}", model.sizes(), meta.layer_sizes),
        ));
    }
    if meta.class_names.len() != model.num_classes() {
        return Err(format_err(
            &meta_path,
            format!("{} class names for {} outputs", meta.class_names.len(), model.num_classes()),
        ));
    }
    Ok(TrainedHead { model, meta })
}

/// Writes any report (for example an [`crate::Evaluation`]) as pretty JSON.
pub fn write_report<V: Serialize>(path: &Path, report: &V) -> Result<(), IoError> {
    write_json(path, report)
}

/// The per-epoch metrics log: one JSON object per line, flushed after each
/// epoch so a running job can be followed with `tail -f`.
pub struct MetricsLog {
    path: PathBuf,
    file: fs::File,
}

impl MetricsLog {
    /// Creates (or truncates) the log.
    pub fn create(path: &Path) -> Result<Self, IoError> {
        let file = fs::File::create(path).map_err(io_err(path))?;
        Ok(MetricsLog { path: path.to_path_buf(), file })
    }

    pub fn append(&mut self, record: &EpochRecord) -> Result<(), IoError> {
        let mut line =
            serde_json::to_vec(record).map_err(|source| IoError::Json { path: self.path.clone(), source })?;
        line.push(b'\n');
        self.file.write_all(&line).map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))
    }
}

/// Reads a metrics log back (for reports and tests).
pub fn read_metrics_log(path: &Path) -> Result<Vec<EpochRecord>, IoError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|source| IoError::Json { path: path.to_path_buf(), source }))
        .collect()
}
