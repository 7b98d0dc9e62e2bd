use std::path::PathBuf;

/// Everything fine-tuning can fail with; each message says what went wrong
/// and, where there is one, what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum FinetuneError {
    #[error(
        "refusing to fine-tune from a random head: a random head's large gradients would wreck the \
         pretrained features. Train the head on cached features first (the head stage) and pass its \
         weights, or set allow_random_head (--allow-random-head) if you really mean it"
    )]
    RandomHeadRefused,

    #[error("head weights: {0}")]
    Head(String),

    #[error("graph: {0}")]
    Graph(#[from] onnx_graph::GraphError),

    #[error("choosing trainable parameters: {0}")]
    Selection(String),

    #[error("{0}")]
    Python(String),

    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),

    #[error("ONNX Runtime 1.32 (inference): {0}")]
    Ort(String),

    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },

    #[error(
        "the training loss became {loss} at epoch {epoch}, step {step} (global step {global_step}); \
         stopped before applying that step's update. Lower the learning rate, check the inputs for \
         NaN or inf, or check the preprocessing"
    )]
    NonFiniteLoss { epoch: usize, step: usize, global_step: usize, loss: f64 },

    #[error("data: {0}")]
    Data(String),

    #[error("configuration: {0}")]
    Config(String),

    #[error("run folder {path}: {message}")]
    Run { path: PathBuf, message: String },

    #[error("export: {0}")]
    Export(String),
}

impl FinetuneError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FinetuneError {
        let path = path.into();
        move |source| FinetuneError::Io { what, path, source }
    }

    pub(crate) fn ort(error: impl std::fmt::Display) -> FinetuneError {
        FinetuneError::Ort(error.to_string())
    }
}

pub type Result<T, E = FinetuneError> = std::result::Result<T, E>;
