//! The classifier head: a small multilayer perceptron trained on cached
//! embeddings, in pure Rust.
//!
//! Code map:
//! - [`model`]: dense layers, activations, dropout, forward and backward.
//! - [`loss`]: softmax fused with cross-entropy (label smoothing, class weights).
//! - [`optim`]: SGD/momentum/Nesterov, Adam, AdamW, as fused element-wise updates.
//! - [`train`]: the loop over a [`BatchSource`], early stopping, determinism.
//! - [`config`]: [`HeadConfig`] (defined with the head's file contract in
//!   `contracts::head`), the `[head]` table of an experiment.
//! - [`artifact`]: a trained head with its metadata.
//! - [`io`]: safetensors + JSON files and the JSON-lines metrics log.
//! - [`onnx_export`]: the head as an ONNX graph (embedding → probabilities).
//!
//! Schedules, early stopping, epoch records and metrics come from
//! `train-kit`, shared with fine-tuning. Everything except [`io`] and
//! [`onnx_export`] is pure: no files, no Parquet, no ONNX Runtime (the
//! `head` binary that reads the feature cache is the `head-cli` crate).
//! The math is generic over [`Scalar`] (`f32`, `f64`) so the exact code that
//! trains in f32 is checked against finite differences in f64.

pub mod artifact;
pub mod config;
pub mod io;
mod linalg;
pub mod loss;
pub mod model;
pub mod onnx_export;
pub mod optim;
mod scalar;
#[cfg(test)]
mod testutil;
pub mod train;

pub use artifact::{train_head, HeadMeta, TrainedHead};
pub use config::{ClassWeights, ConfigError, HeadConfig};
pub use loss::{balanced_class_weights, softmax_cross_entropy, LossOptions};
pub use model::{Activation, Dense, Init, Mlp};
pub use optim::{AdamConfig, AdamWConfig, Optimizer, OptimizerConfig, SgdConfig};
pub use scalar::Scalar;
pub use train::{fit, fit_model, BatchSource, FitOutcome, InMemory, TrainError, Trainer};
