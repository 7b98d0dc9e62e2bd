//! Reads, writes, generates and cuts ONNX graphs, in pure Rust.
//!
//! - [`proto`]: the ONNX protobuf messages, hand-declared for `prost`.
//! - [`read_model`] / [`write_model`] (and [`decode_model`] / [`encode_model`]).
//! - [`GraphBuilder`]: a small builder for the sequential models we generate.
//! - [`vgg`]: the VGG16 topology and a tiny VGG-shaped model, with seeded
//!   random weights (never pretrained ones).
//! - [`edit`]: cut a graph at an intermediate tensor, free the spatial input
//!   dims, expose or rename tensors, and inspect inputs, outputs and
//!   initializers.
//! - [`inspect`]: a typed listing of a graph's tensors, shapes and
//!   initializers, with likely conv-base cut points marked.
//! - [`batch_norm`]: batch normalisation rewritten as arithmetic with its
//!   running statistics frozen, for training graphs.
//! - [`shape`]: dims and a light shape inference for the ops a VGG uses.
//! - [`reference`]: a naive evaluator of those ops, to check a runtime's
//!   results independently.
//!
//! This crate knows nothing of ONNX Runtime, Parquet or Python; apart from
//! reading and writing model files it does no I/O.

pub mod batch_norm;
pub mod builder;
pub mod edit;
pub mod inspect;
pub mod proto;
pub mod reference;
pub mod shape;
pub mod tensor;
pub mod vgg;

use std::path::{Path, PathBuf};

use prost::Message;

pub use builder::{ConvOptions, GraphBuilder};
pub use edit::{
    cut_at, expose_output, free_input_dims, initializer_f32, initializers, inputs, outputs, rename_tensor,
    set_initializer_f32, tensor_names, TensorSummary,
};
pub use inspect::{inspect, ModelSummary};
pub use proto::ModelProto;
pub use shape::Dim;

/// The ONNX IR version of the models this crate generates. ONNX Runtime 1.19
/// (the training API) reads IR versions up to 10.
pub const IR_VERSION: i64 = 8;
/// The default-domain opset of the models this crate generates.
pub const OPSET_VERSION: i64 = 13;

/// Everything that can go wrong reading, writing or editing a graph.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the model has no graph")]
    NoGraph,
    #[error("no tensor named {0:?} in the graph")]
    UnknownTensor(String),
    #[error("no initializer named {0:?} in the graph")]
    UnknownInitializer(String),
    #[error("a tensor named {0:?} already exists in the graph")]
    DuplicateName(String),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Invalid(String),
}

/// Parses an ONNX model from its protobuf bytes.
pub fn decode_model(bytes: &[u8]) -> Result<ModelProto, GraphError> {
    Ok(ModelProto::decode(bytes)?)
}

/// Serialises a model to protobuf bytes.
pub fn encode_model(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Reads an ONNX model file. Tensors stored in external data files stay
/// external: their `external_data` entries are kept as they are.
pub fn read_model(path: impl AsRef<Path>) -> Result<ModelProto, GraphError> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| GraphError::Read { path: path.to_owned(), source })?;
    decode_model(&bytes)
}

/// Writes a model file atomically: a reader sees the old file or the new
/// one, never half of one.
pub fn write_model(model: &ModelProto, path: impl AsRef<Path>) -> Result<(), GraphError> {
    let path = path.as_ref();
    atomic_file::write(path, &encode_model(model)).map_err(|e| GraphError::Write { path: e.path, source: e.source })
}

/// Returns the model's graph, or [`GraphError::NoGraph`].
pub fn graph(model: &ModelProto) -> Result<&proto::GraphProto, GraphError> {
    model.graph.as_ref().ok_or(GraphError::NoGraph)
}

/// Returns the model's graph mutably, or [`GraphError::NoGraph`].
pub fn graph_mut(model: &mut ModelProto) -> Result<&mut proto::GraphProto, GraphError> {
    model.graph.as_mut().ok_or(GraphError::NoGraph)
}

/// Looks up a `metadata_props` value.
pub fn metadata<'m>(model: &'m ModelProto, key: &str) -> Option<&'m str> {
    model.metadata_props.iter().find(|entry| entry.key == key).map(|entry| entry.value.as_str())
}

/// Sets a `metadata_props` value, replacing an existing one with that key.
pub fn set_metadata(model: &mut ModelProto, key: &str, value: impl Into<String>) {
    let value = value.into();
    match model.metadata_props.iter_mut().find(|entry| entry.key == key) {
        Some(entry) => entry.value = value,
        None => model.metadata_props.push(proto::StringStringEntryProto { key: key.to_owned(), value }),
    }
}
