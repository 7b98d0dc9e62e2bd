//! The one error type: every variant names the file (or the input) and why.

use std::path::PathBuf;

/// Why a report could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Reading, writing, renaming or removing a file failed.
    #[error("report: cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Drawing or encoding a plot failed (for example no usable font).
    #[error("report: cannot draw {}: {reason}", path.display())]
    Plot { path: PathBuf, reason: String },
    /// The input is inconsistent (e.g. per-class counts that do not match the classes).
    #[error("report: invalid input: {reason}")]
    Input { reason: String },
}

impl ReportError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| ReportError::Io { action, path, source }
    }
}
