use std::path::PathBuf;

use runtime::ort;

/// Everything fine-tuning can fail with; each message says what went wrong
/// and, where there is one, what to do about it. Failures of another crate
/// are kept as the error's source.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error("--head is needed: the head stage's output folder (or --allow-random-head)")]
    NoHead,

    #[error("head weights: {0}")]
    Head(#[from] HeadError),

    #[error("graph: {0}")]
    Graph(#[from] onnx_graph::GraphError),

    #[error(transparent)]
    Compose(#[from] compose::ComposeError),

    /// The graph cannot be trained (or split) as asked.
    #[error("{0}")]
    Setup(#[from] SetupError),

    #[error("choosing trainable parameters: {0}")]
    Selection(#[from] SelectionError),

    #[error("{0}")]
    Python(#[from] PythonError),

    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    #[error("ONNX Runtime 1.32 (inference): {0}")]
    Ort(#[from] ort::Error),

    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         stopped before applying that step's update. Lower the learning rate, check the inputs for \
         NaN or inf, or check the preprocessing"
    )]
    NonFiniteLoss { epoch: usize, step: usize, global_step: usize, loss: f64 },

    #[error("data: {0}")]
    Data(#[from] DataError),

    /// Settings that [`contracts`] validation refused (its checks describe
    /// the problem in words).
    #[error("{what}: {reason}")]
    Settings { what: &'static str, reason: String },

    #[error("{0}")]
    Run(#[from] RunError),

    #[error("export: {0}")]
    Export(#[from] ExportError),

    /// A model spec file that does not parse (its message names the file).
    #[error(transparent)]
    Spec(spec::FileError),

    #[error(transparent)]
    Model(#[from] models::ModelError),

    #[error(transparent)]
    Contract(#[from] contracts::ContractError),

    #[error(transparent)]
    Dataset(#[from] dataset::DatasetError),

    #[error("prefix cache: {0}")]
    Cache(#[from] feature_cache::CacheError),
}

/// The head's weights do not make a head for this conv base and dataset.
#[derive(Debug, thiserror::Error)]
pub enum HeadError {
    #[error("{}: the head was trained for classes {head:?}, the dataset has {dataset:?}", path.display())]
    Classes { path: PathBuf, head: Vec<String>, dataset: Vec<String> },
}

/// The graph cannot be trained (or split) as asked.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(
        "the conv base has ONNX IR version {found}, and ONNX Runtime 1.19 (the training API) reads at most \
         {max}; re-export it with onnx 1.17 or earlier"
    )]
    IrVersion { found: i64, max: i64 },
    #[error(
        "a graph to train must have one input and one output (the logits); this one has inputs {inputs:?} \
         and outputs {outputs:?}"
    )]
    Endpoints { inputs: Vec<String>, outputs: Vec<String> },
    #[error("nothing comes after {tensor:?}: the suffix would be empty")]
    EmptySuffix { tensor: String },
    #[error("node {node:?} after {tensor:?} reads {input:?} from before it; the graph cannot be split there")]
    CrossesSplit { node: String, tensor: String, input: String },
    #[error("the prefix output {output:?} has no fixed shape ({dims}); cannot cache it")]
    UnfixedPrefix { output: String, dims: String },
    #[error("prefix outputs of shape {shape:?} do not fit the cache key's {len} values")]
    PrefixKey { shape: Vec<usize>, len: usize },
    #[error("{what} needs images from a dataset; random data trains the whole graph, unaugmented")]
    NeedsDataset { what: String },
}

/// Which parameters train could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum SelectionError {
    #[error("{text:?}: `last:N` wants a number of conv layers")]
    LastN { text: String },
    #[error("{what}: no f32 parameter named {name:?} in the graph")]
    NoParameter { what: String, name: String },
    #[error("the model spec has no block {name:?} (it has {blocks:?})")]
    NoBlock { name: String, blocks: Vec<String> },
    #[error("cannot unfreeze the last {wanted} conv layers: the conv base has {convs}")]
    TooFewConvs { wanted: usize, convs: usize },
    #[error("conv node {node:?} takes no parameter this crate can trace to an initializer")]
    UntracedConv { node: String },
    #[error(
        "parameter {parameter:?} trains but comes before {tensor:?}: it cannot train on cached activations; \
         split earlier or freeze it"
    )]
    BeforeSplit { parameter: String, tensor: String },
    #[error(
        "{name:?} is a running statistic of batch normalisation {node:?}: statistics are not learned by gradient \
         and stay frozen; remove it from the block's params or the names: list"
    )]
    Statistic { name: String, node: String },
}

/// Examples that cannot be trained on.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("the training set is empty")]
    EmptyTraining,
    #[error("the validation set is empty; pass none instead")]
    EmptyValidation,
    #[error("inputs of shape {shape:?} do not match {labels} labels (the first axis is the example)")]
    InputsLabels { shape: Vec<usize>, labels: usize },
    #[error("label {label} is negative")]
    NegativeLabel { label: i64 },
    #[error("label {label} is out of range for {classes} classes")]
    LabelRange { label: i64, classes: usize },
    #[error("index {index} is out of range ({len} examples)")]
    Index { index: usize, len: usize },
    #[error("asked for {expected} examples, the source gave inputs {shape:?} and {labels} labels")]
    BatchSize { expected: usize, shape: Vec<usize>, labels: usize },
    #[error("the input batch is not in standard (C) layout")]
    Layout,
    #[error("image {content_id} holds {bytes} bytes for {width}×{height} RGB")]
    ImageBytes { content_id: String, bytes: usize, width: u32, height: u32 },
    #[error("image {content_id}: {source}")]
    Image {
        content_id: String,
        #[source]
        source: imaging::preprocess::PixelSizeError,
    },
    #[error("{what}: {source}")]
    Shape {
        what: &'static str,
        #[source]
        source: ndarray::ShapeError,
    },
}

/// The embedded Python (ONNX Runtime's training API) failed.
#[derive(Debug, thiserror::Error)]
pub enum PythonError {
    #[error("the embedded Python is already set up for {}; one process uses one training venv (asked for {})",
        current.display(), asked.display())]
    OtherVenv { current: PathBuf, asked: PathBuf },
    #[error(
        "the training venv's site-packages {} does not exist; run `cargo xtask setup` (runtime::ensure_training_venv)",
        path.display()
    )]
    NoVenv { path: PathBuf },
    #[error("{} is not valid UTF-8", path.display())]
    NotUtf8 { path: PathBuf },
    #[error("this session was opened without an optimizer")]
    NoOptimizer,
    /// A Python exception, with the traceback.
    #[error("{what}: {source}{traceback}")]
    Exception {
        what: String,
        /// Empty, or the formatted traceback after a newline.
        traceback: String,
        #[source]
        source: pyo3::PyErr,
    },
}

/// A run folder or artifacts folder that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "run folder {}: holds another run (fingerprint {found}, this one is {expected}): the artifacts, \
         settings or data differ. Use another folder, or delete this one to start over",
        path.display()
    )]
    OtherRun { path: PathBuf, found: String, expected: String },
    #[error("run folder {}: no epoch has completed", path.display())]
    NoEpoch { path: PathBuf },
    #[error("{}: run state format {found} is not {expected}", path.display())]
    StateFormat { path: PathBuf, found: u32, expected: u32 },
    #[error("{}: {problem}; delete the run folder to start over", path.display())]
    State { path: PathBuf, problem: &'static str },
    #[error("{}: names checkpoint {checkpoint:?}, which is missing; delete the run folder to start over", path.display())]
    MissingCheckpoint { path: PathBuf, checkpoint: String },
    #[error("{}: not an artifacts manifest: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: holds artifacts with fingerprint {found}, not {expected}; remove the folder", path.display())]
    OtherArtifacts { path: PathBuf, found: String, expected: String },
}

/// The exported model is not what it should be.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("checkpoint parameter {name:?}: {source}")]
    Parameter {
        name: String,
        #[source]
        source: onnx_graph::GraphError,
    },
    #[error("the model has {count} inputs, expected one")]
    Inputs { count: usize },
    #[error("the model has {count} outputs, expected one")]
    Outputs { count: usize },
    #[error("the output has shape {shape:?}, expected [n, classes]")]
    OutputShape { shape: Vec<usize> },
    #[error("{rows} rows out for {inputs} inputs")]
    Rows { rows: usize, inputs: usize },
    #[error("row {row} is not a probability distribution: {values}")]
    NotProbabilities { row: usize, values: String },
}

impl FinetuneError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FinetuneError {
        let path = path.into();
        move |source| FinetuneError::Io { what, path, source }
    }

    /// Settings refused by a `validate` of `contracts`.
    pub(crate) fn settings(what: &'static str) -> impl FnOnce(String) -> FinetuneError {
        move |reason| FinetuneError::Settings { what, reason }
    }
}

pub type Result<T, E = FinetuneError> = std::result::Result<T, E>;

/// A folder that could not be locked (`atomic_file::Lock::exclusive_folder`).
impl From<atomic_file::LockError> for FinetuneError {
    fn from(e: atomic_file::LockError) -> Self {
        FinetuneError::Io { what: "cannot lock", path: e.path, source: e.source }
    }
}
