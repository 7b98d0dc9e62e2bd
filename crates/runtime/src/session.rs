//! The one way stages build ONNX Runtime sessions: [`SessionOptions`] says
//! what a stage changes from ONNX Runtime's defaults, [`open_session`]
//! loads the runtime (once per process) and commits the model.

use std::path::{Path, PathBuf};

use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;

use crate::{Environment, RuntimeError};

/// Where a model comes from.
#[derive(Debug, Clone, Copy)]
pub enum ModelSource<'a> {
    File(&'a Path),
    /// An encoded `ModelProto`, for graphs built or edited in memory.
    Memory(&'a [u8]),
}

impl ModelSource<'_> {
    /// How errors name the model.
    fn describe(&self) -> PathBuf {
        match self {
            ModelSource::File(path) => path.to_path_buf(),
            ModelSource::Memory(bytes) => PathBuf::from(format!("<in-memory model, {} bytes>", bytes.len())),
        }
    }
}

/// What a session changes from ONNX Runtime's defaults; `Default` changes
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Intra-op threads; 0 leaves ONNX Runtime's choice (one per core).
    pub intra_threads: usize,
    /// Inter-op threads; 0 leaves ONNX Runtime's choice.
    pub inter_threads: usize,
    /// The graph optimisation level; `None` leaves ONNX Runtime's default.
    pub optimization: Option<GraphOptimizationLevel>,
    /// Whether idle intra-op threads spin-wait for the next run (ONNX
    /// Runtime's default). Off frees the cores as soon as a run ends, for
    /// work that needs them right after (another session, the training
    /// runtime).
    pub intra_op_spinning: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { intra_threads: 0, inter_threads: 0, optimization: None, intra_op_spinning: true }
    }
}

impl SessionOptions {
    pub fn intra_threads(self, intra_threads: usize) -> Self {
        SessionOptions { intra_threads, ..self }
    }

    pub fn inter_threads(self, inter_threads: usize) -> Self {
        SessionOptions { inter_threads, ..self }
    }

    pub fn optimization(self, level: GraphOptimizationLevel) -> Self {
        SessionOptions { optimization: Some(level), ..self }
    }

    pub fn intra_op_spinning(self, intra_op_spinning: bool) -> Self {
        SessionOptions { intra_op_spinning, ..self }
    }

    /// A session builder on the process's environment with these options;
    /// only what differs from ONNX Runtime's defaults is set.
    fn builder(&self, environment: &Environment) -> Result<SessionBuilder, ort::Error> {
        let mut builder = Session::builder(environment)?;
        if let Some(level) = self.optimization {
            builder = builder.with_optimization_level(level)?;
        }
        if self.intra_threads > 0 {
            builder = builder.with_intra_threads(self.intra_threads)?;
        }
        if self.inter_threads > 0 {
            builder = builder.with_inter_threads(self.inter_threads)?;
        }
        if !self.intra_op_spinning {
            builder = builder.with_intra_op_spinning(false)?;
        }
        Ok(builder)
    }
}

/// Loads ONNX Runtime ([`crate::init_ort`]) and opens `model` with `options`.
pub fn open_session(options: &SessionOptions, model: ModelSource<'_>) -> Result<Session, RuntimeError> {
    let environment = crate::init_ort()?;
    let session = options.builder(environment).and_then(|mut builder| match model {
        ModelSource::File(path) => builder.commit_from_file(path),
        ModelSource::Memory(bytes) => builder.commit_from_memory(bytes),
    });
    session.map_err(|source| RuntimeError::Session { model: model.describe(), source })
}
