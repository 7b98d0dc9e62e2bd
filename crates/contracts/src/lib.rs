//! The file contracts between stages. Every file one stage writes and
//! another reads is one typed struct here, written and read only through
//! [`write`] / [`read`] (JSON) or [`JsonLines`] (JSON lines), which stamp
//! and check its `schema_version`:
//!
//! | file | struct | written by |
//! |---|---|---|
//! | `dataset.json` | [`dataset::DatasetInfo`] | ingest |
//! | `features.json` | [`features::FeaturesInfo`] | features |
//! | `head.json`, `head.safetensors` | [`head::HeadMeta`], [`head::DenseWeights`] | head |
//! | `evaluation-<split>.json` | [`Evaluation`] | head, finetune |
//! | `metrics.jsonl` | [`EpochRecord`] (one a line) | head, finetune |
//! | `finetune.json` | [`finetune::FinetuneSummary`] | finetune |
//! | `run.json`, `.stage.json` | [`run::RunRecord`], [`run::StageMarker`] | the conductor |
//!
//! The exported model's metadata is [`spec::InferenceMetadata`] (ONNX
//! metadata properties, not JSON). Settings types that files record (the
//! head's [`head::HeadConfig`], fine-tuning's [`finetune::FinetuneConfig`])
//! live here too: they are the one source of their defaults.
//!
//! A file without `schema_version` was written before versioning and reads
//! as version 1; any other version than the reader's is a clear error.

pub mod dataset;
pub mod features;
pub mod finetune;
pub mod head;
pub mod run;
mod split;

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use split::Split;
pub use train_kit::{EpochRecord, Evaluation};

/// A JSON file contract.
pub trait Contract: Serialize + DeserializeOwned {
    /// What the file is, for messages (`"features.json"`).
    const NAME: &'static str;
    /// Bumped on an incompatible change; readers refuse other versions.
    const SCHEMA_VERSION: u32;
}

impl Contract for Evaluation {
    const NAME: &'static str = "evaluation";
    const SCHEMA_VERSION: u32 = 1;
}

impl Contract for EpochRecord {
    const NAME: &'static str = "metrics.jsonl record";
    const SCHEMA_VERSION: u32 = 1;
}

/// A contract file that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a valid {what}: {source}", path.display())]
    Parse {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{}: {what} schema version {found}, this build reads version {expected}; rerun the stage that wrote it",
        path.display()
    )]
    Version { path: PathBuf, what: &'static str, found: u32, expected: u32 },
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
}

impl ContractError {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ContractError + '_ {
        move |source| ContractError::Io { path: path.to_path_buf(), source }
    }

    pub fn invalid(path: &Path, message: impl Into<String>) -> ContractError {
        ContractError::Invalid { path: path.to_path_buf(), message: message.into() }
    }
}

impl From<atomic_file::WriteError> for ContractError {
    fn from(e: atomic_file::WriteError) -> Self {
        ContractError::Io { path: e.path, source: e.source }
    }
}

/// The value with its schema version first.
#[derive(Serialize)]
struct Versioned<'a, T> {
    schema_version: u32,
    #[serde(flatten)]
    value: &'a T,
}

#[derive(Deserialize)]
struct VersionOnly {
    #[serde(default = "first_version")]
    schema_version: u32,
}

fn first_version() -> u32 {
    1
}

/// `value` as the contract's JSON text (pretty, with its schema version).
pub fn to_json<T: Contract>(value: &T) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(&Versioned { schema_version: T::SCHEMA_VERSION, value })
        .expect("contract types serialise");
    text.push(b'\n');
    text
}

/// Writes `value` to `path` atomically (a synced temporary sibling renamed
/// into place), creating the parent folder.
pub fn write<T: Contract>(path: &Path, value: &T) -> Result<(), ContractError> {
    Ok(atomic_file::write(path, &to_json(value))?)
}

/// Reads a contract file, checking its schema version.
pub fn read<T: Contract>(path: &Path) -> Result<T, ContractError> {
    let bytes = std::fs::read(path).map_err(ContractError::io(path))?;
    from_json(path, &bytes)
}

/// Parses contract JSON (`path` names it in errors).
pub fn from_json<T: Contract>(path: &Path, bytes: &[u8]) -> Result<T, ContractError> {
    let parse = |source| ContractError::Parse { path: path.to_path_buf(), what: T::NAME, source };
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(parse)?;
    check_version::<T>(path, &value)?;
    if let Some(map) = value.as_object_mut() {
        map.remove("schema_version");
    }
    serde_json::from_value(value).map_err(parse)
}

fn check_version<T: Contract>(path: &Path, value: &serde_json::Value) -> Result<(), ContractError> {
    let parse = |source| ContractError::Parse { path: path.to_path_buf(), what: T::NAME, source };
    let found = VersionOnly::deserialize(value).map_err(parse)?.schema_version;
    if found != T::SCHEMA_VERSION {
        return Err(ContractError::Version {
            path: path.to_path_buf(),
            what: T::NAME,
            found,
            expected: T::SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// A JSON-lines file of contract records, appended and flushed one line at
/// a time so a running job can be followed with `tail -f`.
pub struct JsonLines {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonLines {
    /// Creates (or truncates) the file.
    pub fn create(path: &Path) -> Result<JsonLines, ContractError> {
        let file = std::fs::File::create(path).map_err(ContractError::io(path))?;
        Ok(JsonLines { path: path.to_path_buf(), file })
    }

    /// Opens the file for appending, creating it if missing.
    pub fn append_to(path: &Path) -> Result<JsonLines, ContractError> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(ContractError::io(path))?;
        Ok(JsonLines { path: path.to_path_buf(), file })
    }

    pub fn append<T: Contract>(&mut self, record: &T) -> Result<(), ContractError> {
        let mut line = serde_json::to_vec(&Versioned { schema_version: T::SCHEMA_VERSION, value: record })
            .expect("contract types serialise");
        line.push(b'\n');
        self.file.write_all(&line).map_err(ContractError::io(&self.path))?;
        self.file.flush().map_err(ContractError::io(&self.path))
    }

    /// Every record of a JSON-lines file, checking each line's version.
    pub fn read_all<T: Contract>(path: &Path) -> Result<Vec<T>, ContractError> {
        let text = std::fs::read_to_string(path).map_err(ContractError::io(path))?;
        text.lines().filter(|l| !l.trim().is_empty()).map(|line| from_json(path, line.as_bytes())).collect()
    }

    /// `records` as the file's whole text.
    pub fn to_text<T: Contract>(records: &[T]) -> Vec<u8> {
        let mut out = Vec::new();
        for record in records {
            out.extend(
                serde_json::to_vec(&Versioned { schema_version: T::SCHEMA_VERSION, value: record })
                    .expect("contract types serialise"),
            );
            out.push(b'\n');
        }
        out
    }
}

/// The project's cache folder: `$TL_CACHE_DIR` if set, else
/// `$XDG_CACHE_HOME/tl-vision`, else `$HOME/.cache/tl-vision`. The model,
/// runtime and feature caches live under it.
pub fn cache_dir() -> Result<PathBuf, ContractError> {
    let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    resolve_cache_dir(var(TL_CACHE_DIR), var("XDG_CACHE_HOME"), var("HOME")).ok_or_else(|| {
        ContractError::invalid(Path::new("$HOME"), "no cache folder: set TL_CACHE_DIR, XDG_CACHE_HOME or HOME")
    })
}

/// The environment variable that moves the project's cache.
pub const TL_CACHE_DIR: &str = "TL_CACHE_DIR";

fn resolve_cache_dir(tl: Option<PathBuf>, xdg: Option<PathBuf>, home: Option<PathBuf>) -> Option<PathBuf> {
    tl.or_else(|| xdg.map(|x| x.join("tl-vision"))).or_else(|| home.map(|h| h.join(".cache").join("tl-vision")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Example {
        name: String,
        count: u32,
    }

    impl Contract for Example {
        const NAME: &'static str = "example.json";
        const SCHEMA_VERSION: u32 = 2;
    }

    #[test]
    fn round_trips_with_its_version_first() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/example.json");
        let value = Example { name: "a".into(), count: 3 };
        write(&path, &value).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("{\n  \"schema_version\": 2,"), "{text}");
        assert_eq!(read::<Example>(&path).unwrap(), value);
    }

    #[test]
    fn another_version_or_a_missing_one_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("example.json");
        std::fs::write(&path, r#"{"schema_version": 3, "name": "a", "count": 1}"#).unwrap();
        let err = read::<Example>(&path).unwrap_err().to_string();
        assert!(err.contains("example.json schema version 3") && err.contains("version 2"), "{err}");
        // Unversioned files are version 1.
        std::fs::write(&path, r#"{"name": "a", "count": 1}"#).unwrap();
        assert!(matches!(read::<Example>(&path), Err(ContractError::Version { found: 1, .. })));
        std::fs::write(&path, r#"{"schema_version": 2, "name": "a", "cuont": 1}"#).unwrap();
        let err = read::<Example>(&path).unwrap_err().to_string();
        assert!(err.contains("cuont") && err.contains(&path.display().to_string()), "{err}");
    }

    #[test]
    fn json_lines_carry_a_version_on_every_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut log = JsonLines::create(&path).unwrap();
        log.append(&Example { name: "a".into(), count: 1 }).unwrap();
        log.append(&Example { name: "b".into(), count: 2 }).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().filter(|l| l.starts_with("{\"schema_version\":2,")).count(), 2, "{text}");
        let back: Vec<Example> = JsonLines::read_all(&path).unwrap();
        assert_eq!(back[1], Example { name: "b".into(), count: 2 });
        assert_eq!(JsonLines::to_text(&back), text.as_bytes());
    }

    #[test]
    fn cache_dir_prefers_tl_cache_dir_then_xdg_then_home() {
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(resolve_cache_dir(p("/t"), p("/x"), p("/h")), p("/t"));
        assert_eq!(resolve_cache_dir(None, p("/x"), p("/h")), p("/x/tl-vision"));
        assert_eq!(resolve_cache_dir(None, None, p("/h")), p("/h/.cache/tl-vision"));
        assert_eq!(resolve_cache_dir(None, None, None), None);
    }
}
