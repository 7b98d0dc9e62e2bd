//! The conductor's files: `run.json` in each run folder ([`RunRecord`])
//! and `.stage.json` in each stage-store entry ([`StageMarker`]), written
//! last, which vouches that the entry is complete.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::Contract;

/// `run.json`, in each run folder.
pub const RUN_FILE: &str = "run.json";
/// The marker of a complete stage-store entry.
pub const MARKER_FILE: &str = ".stage.json";

/// Whether a stage ran; serialised as `"ran"`, `"skipped"`, `"failed"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StageStatus {
    Ran,
    Skipped,
    Failed,
}

impl StageStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StageStatus::Ran => "ran",
            StageStatus::Skipped => "skipped",
            StageStatus::Failed => "failed",
        }
    }
}

/// One stage in `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRecord {
    pub name: String,
    pub status: StageStatus,
    pub seconds: f64,
    pub fingerprint: String,
    /// The stage's output in the store.
    pub output: PathBuf,
    pub log: PathBuf,
    pub note: String,
}

/// `run.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub name: String,
    pub started_at: String,
    pub model_spec: PathBuf,
    pub model_note: Option<String>,
    pub stages: Vec<StageRecord>,
    pub seconds: f64,
    pub report: Option<PathBuf>,
}

impl Contract for RunRecord {
    const NAME: &'static str = "run.json";
    const SCHEMA_VERSION: u32 = 1;
}

/// `.stage.json`: written by the conductor after a stage succeeded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageMarker {
    pub stage: String,
    pub fingerprint: String,
    pub seconds: f64,
    pub finished_at: String,
}

impl Contract for StageMarker {
    const NAME: &'static str = ".stage.json";
    const SCHEMA_VERSION: u32 = 1;
}
