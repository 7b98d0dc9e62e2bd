//! Fine-tuning: the conv base and the trained head composed into one ONNX
//! graph, the top block and the head trained with ONNX Runtime's training
//! API, and the result exported as one image-to-probabilities model that
//! stock ONNX Runtime runs.
//!
//! - [`compose`]: conv base + pooling + head (from its weights) → one graph
//!   (logits) and its inference twin (probabilities). Refuses a random head
//!   unless asked.
//! - [`select`]: which parameters train (`block5`, the last N convs, names;
//!   the head always).
//! - [`ort_training`]: the only module that talks to Python (PyO3): the
//!   training API of `onnxruntime-training` 1.19.2.
//! - [`artifacts`]: training artifacts in a folder keyed by a fingerprint.
//! - [`data`], [`train`]: the training loop in Rust, with
//!   validation, early stopping, best checkpoint, metrics and resume.
//! - [`export`]: the best checkpoint as `model.onnx` (softmax appended,
//!   preprocessing in the metadata), checked in ONNX Runtime 1.32.
//! - [`stream`]: a split's images read per batch from the dataset on a
//!   producer thread, shuffled by row group and a bounded buffer.
//! - [`prefix`]: cached-prefix mode (train block 5 + head on precomputed
//!   block-4 activations).
//! - [`stage`]: the whole stage, as `finetune train` and `finetune smoke`
//!   run it: [`plan`] (read the inputs, resolve the model, compose, choose
//!   what trains and how the prefix runs), then [`Plan::run`] (artifacts,
//!   training, export, test evaluation, `finetune.json`).
//!
//! The training loop knows nothing of Parquet, image decoding or the
//! head's training: inputs arrive through [`data::BatchSource`] as
//! preprocessed f32 batches, head weights as plain arrays
//! ([`DenseLayer`], from the `compose` crate); [`stage`] connects them to the files.

pub mod artifacts;
pub mod augment;
pub mod data;
mod error;
pub mod export;
pub mod images;
pub mod infer;
pub mod ort_training;
pub mod prefix;
pub mod select;
pub mod stage;
pub mod stream;
pub mod train;

pub use artifacts::{ensure_artifacts, ArtifactRequest, Artifacts, ArtifactsManifest};
pub use augment::{Augment, CropRange};
pub use compose::{compose, ComposeError, ComposeOptions, Composed, DenseLayer, HeadInit, LOGITS, PROBABILITIES};
pub use data::{epoch_order, Batch, BatchSource, Batches, EpochOrder, InMemory};
pub use error::{
    DataError, ExportError, FinetuneError, HeadError, PythonError, Result, RunError, SelectionError, SetupError,
};
pub use export::{
    export_full_model, export_inference_model, preprocessing_metadata, run_inference, verify_inference_model,
};
pub use images::{ImageSource, StoredImage};
pub use infer::Inference;
pub use ort_training::{Loss, OptimizerKind, OrtTraining, SessionConfig, StepOutput, TrainingSession};
pub use prefix::{
    cached_activations, latest_frozen_split, precompute, prefix_cache_key, prefix_item_shape, split_at,
    suffix_parameters, PrefixCacheStats, PrefixSource, SplitGraph, StoredActivations,
};
pub use select::{apply_batch_norm, select_parameters, ParameterSplit, Unfreeze};
pub use stage::{plan, train_config, DataSource, HeadSource, Hooks, Job, Plan};
pub use stream::{StreamedImages, READ_AHEAD_BATCHES, SHUFFLE_BUFFER_ROWS};
pub use train::{train, EpochRecord, RunOptions, RunState, StopReason, TrainConfig, TrainOutcome};
pub use train_kit::Schedule;
