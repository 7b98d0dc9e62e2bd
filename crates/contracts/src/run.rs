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

/// `.stage.json`: written by the conductor after a stage succeeded, into
/// the entry's staging folder, before the folder is published under its
/// final name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageMarker {
    pub stage: String,
    pub fingerprint: String,
    pub seconds: f64,
    pub finished_at: String,
    /// Every regular file of the entry but the marker, sorted by path: what
    /// a skip checks is still there before trusting the entry.
    pub outputs: Vec<OutputFile>,
}

/// One file a [`StageMarker`] vouches for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    /// Relative to the entry, `/`-separated.
    pub path: String,
    pub size: u64,
    /// SHA-256 (hex) of the bytes, for files small enough to hash on every
    /// skip ([`OutputFile::HASHED_BELOW`]); size only for larger ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl OutputFile {
    /// Files below this many bytes are hashed.
    pub const HASHED_BELOW: u64 = 1 << 20;
}

/// Version 2 lists the entry's files; a version-1 marker does not read, so
/// its entry counts as incomplete and the stage runs again.
impl Contract for StageMarker {
    const NAME: &'static str = ".stage.json";
    const SCHEMA_VERSION: u32 = 2;
}
