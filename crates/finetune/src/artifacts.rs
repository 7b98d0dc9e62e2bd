//! Training artifacts (training, eval and optimizer graphs plus the initial
//! checkpoint) in a folder named by a fingerprint of everything they depend
//! on: the composed graph's bytes, the trainable and frozen parameter lists,
//! the loss, the optimizer and the training API version. Unchanged inputs
//! reuse the folder; anything else makes a new one.
//!
//! A folder is complete when its `artifacts.json` holds the full
//! fingerprint: artifacts are generated into a temporary sibling
//! (`atomic_file::partial_path`), the manifest is written last, and the
//! folder is synced and renamed into place. Generation holds a lock on the
//! root folder: a second process waits, then reuses the first one's folder;
//! the lock's holder removes what killed processes left half-made.

use std::path::{Path, PathBuf};
use std::time::Instant;

use onnx_graph::ModelProto;
use serde::{Deserialize, Serialize};

use crate::error::{FinetuneError, Result, RunError, SetupError};
use crate::ort_training::{Loss, ModelFiles, OptimizerKind, OrtTraining, TRAINING_API_VERSION};
use crate::select::ParameterSplit;

/// The manifest file inside an artifacts folder.
pub const MANIFEST: &str = "artifacts.json";
/// The composed graph handed to `generate_artifacts`; removed afterwards
/// (its weights are in the checkpoint; its SHA-256 is in the manifest).
const BASE_MODEL: &str = "base_model.onnx";
/// The initial checkpoint `generate_artifacts` writes.
pub const CHECKPOINT: &str = "checkpoint";
/// Bumped when the folder layout or the generation call changes.
const FORMAT_VERSION: u32 = 1;

/// What to generate artifacts for.
#[derive(Clone, Copy, Debug)]
pub struct ArtifactRequest<'a> {
    /// The composed graph: one image input, one output (the logits).
    pub model: &'a ModelProto,
    pub split: &'a ParameterSplit,
    pub loss: Loss,
    pub optimizer: OptimizerKind,
}

/// `artifacts.json`: what the folder holds and what it was made from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArtifactsManifest {
    pub format_version: u32,
    /// SHA-256 over the inputs (see the module doc), 64 hex characters.
    pub fingerprint: String,
    pub training_api_version: String,
    /// SHA-256 of the composed graph the artifacts were made from.
    pub model_sha256: String,
    /// The graph input fed with images (or cached activations).
    pub input: String,
    /// The graph output holding the logits; the training and eval models
    /// output the loss and then it.
    pub logits: String,
    pub trainable: Vec<String>,
    pub frozen: Vec<String>,
    pub loss: Loss,
    pub optimizer: OptimizerKind,
    /// How long `generate_artifacts` took.
    pub generation_seconds: f64,
}

/// A complete artifacts folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Artifacts {
    pub dir: PathBuf,
    pub manifest: ArtifactsManifest,
    /// False when an existing folder was reused.
    pub generated: bool,
}

impl Artifacts {
    pub fn files(&self) -> ModelFiles {
        ModelFiles {
            training_model: self.dir.join("training_model.onnx"),
            eval_model: self.dir.join("eval_model.onnx"),
            optimizer_model: self.dir.join("optimizer_model.onnx"),
        }
    }

    /// The initial checkpoint: the composed graph's weights, no optimizer state.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join(CHECKPOINT)
    }

    /// Reads a complete folder (one with a manifest).
    pub fn open(dir: &Path) -> Result<Artifacts> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path).map_err(FinetuneError::io("cannot read", &path))?;
        let manifest: ArtifactsManifest =
            serde_json::from_str(&text).map_err(|source| RunError::Manifest { path: path.clone(), source })?;
        Ok(Artifacts { dir: dir.to_owned(), manifest, generated: false })
    }
}

/// The fingerprint of an artifact request.
pub fn fingerprint(request: &ArtifactRequest<'_>) -> Result<spec::Fingerprint> {
    let (input, logits) = endpoints(request.model)?;
    let model_sha256 = spec::sha256_hex(&onnx_graph::encode_model(request.model));
    Ok(spec::fingerprint(
        "finetune-artifacts",
        &(
            FORMAT_VERSION,
            TRAINING_API_VERSION,
            model_sha256,
            input,
            logits,
            &request.split,
            request.loss,
            request.optimizer,
        ),
    ))
}

/// Returns the artifacts for `request` under `root` (as
/// `root/artifacts-<fingerprint prefix>/`), generating them if no complete
/// folder exists.
pub fn ensure_artifacts(ort: &OrtTraining, root: &Path, request: &ArtifactRequest<'_>) -> Result<Artifacts> {
    let fingerprint = fingerprint(request)?;
    let dir = root.join(format!("artifacts-{}", fingerprint.short()));
    // Waits while another process generates (these or others), then reuses.
    let _lock = atomic_file::Lock::exclusive_folder(root, "training artifacts being generated")?;
    remove_stale_partials(root);
    if let Some(existing) = complete(&dir, &fingerprint)? {
        return Ok(existing);
    }
    let partial = atomic_file::partial_path(&dir);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(FinetuneError::io("cannot remove", &partial))?;
    }
    if dir.exists() {
        // Not complete (no readable manifest): left by a kill before the
        // rename existed; made again.
        std::fs::remove_dir_all(&dir).map_err(FinetuneError::io("cannot remove", &dir))?;
    }
    // generate_artifacts does not create its folder.
    std::fs::create_dir_all(&partial).map_err(FinetuneError::io("cannot create", &partial))?;
    let result = generate_into(ort, &partial, request, &fingerprint);
    let manifest = match result {
        Ok(manifest) => manifest,
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            return Err(error);
        }
    };
    match atomic_file::publish_dir(&partial, &dir) {
        Ok(()) => Ok(Artifacts { dir, manifest, generated: true }),
        Err(error) => {
            let _ = std::fs::remove_dir_all(&partial);
            Err(FinetuneError::Io { what: "cannot move artifacts into", path: dir, source: error.source })
        }
    }
}

/// The complete artifacts folder `dir` for `fingerprint`, if there is one;
/// an error if it holds other artifacts.
fn complete(dir: &Path, fingerprint: &spec::Fingerprint) -> Result<Option<Artifacts>> {
    match Artifacts::open(dir) {
        Ok(existing) if existing.manifest.fingerprint == fingerprint.0 => Ok(Some(existing)),
        Ok(existing) => Err(RunError::OtherArtifacts {
            path: dir.to_owned(),
            found: existing.manifest.fingerprint,
            expected: fingerprint.0.clone(),
        }
        .into()),
        Err(_) => Ok(None),
    }
}

/// Removes half-made artifact folders of dead processes: named by
/// `atomic_file::partial_path`, or `.artifacts-<fp>.partial-<pid>` as
/// earlier versions named them. The caller holds the root's lock.
fn remove_stale_partials(root: &Path) {
    atomic_file::remove_stale_partials(root, false);
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let pid = name.strip_prefix(".artifacts-").and_then(|rest| rest.rsplit_once(".partial-"));
        if let Some(pid) = pid.and_then(|(_, pid)| pid.parse::<u32>().ok()) {
            if !atomic_file::process_alive(pid) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
}

fn generate_into(
    ort: &OrtTraining,
    dir: &Path,
    request: &ArtifactRequest<'_>,
    fingerprint: &spec::Fingerprint,
) -> Result<ArtifactsManifest> {
    let (input, logits) = endpoints(request.model)?;
    let base = dir.join(BASE_MODEL);
    let bytes = onnx_graph::encode_model(request.model);
    std::fs::write(&base, &bytes).map_err(FinetuneError::io("cannot write", &base))?;
    let started = Instant::now();
    ort.generate_artifacts(
        &base,
        &request.split.trainable,
        &request.split.frozen,
        request.loss,
        request.optimizer,
        std::slice::from_ref(&logits),
        dir,
    )?;
    std::fs::remove_file(&base).map_err(FinetuneError::io("cannot remove", &base))?;
    let manifest = ArtifactsManifest {
        format_version: FORMAT_VERSION,
        fingerprint: fingerprint.0.clone(),
        training_api_version: TRAINING_API_VERSION.to_owned(),
        model_sha256: spec::sha256_hex(&bytes),
        input,
        logits,
        trainable: request.split.trainable.clone(),
        frozen: request.split.frozen.clone(),
        loss: request.loss,
        optimizer: request.optimizer,
        generation_seconds: started.elapsed().as_secs_f64(),
    };
    let path = dir.join(MANIFEST);
    let text =
        serde_json::to_string_pretty(&manifest).map_err(|source| RunError::Manifest { path: path.clone(), source })?;
    std::fs::write(&path, text + "\n").map_err(FinetuneError::io("cannot write", &path))?;
    Ok(manifest)
}

/// The graph's one input and one output.
fn endpoints(model: &ModelProto) -> Result<(String, String)> {
    let inputs = onnx_graph::inputs(model)?;
    let outputs = onnx_graph::outputs(model)?;
    match (inputs.as_slice(), outputs.as_slice()) {
        ([input], [output]) => Ok((input.name.clone(), output.name.clone())),
        _ => Err(SetupError::Endpoints {
            inputs: inputs.iter().map(|i| i.name.clone()).collect(),
            outputs: outputs.iter().map(|o| o.name.clone()).collect(),
        }
        .into()),
    }
}
