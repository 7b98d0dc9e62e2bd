//! Runs an exported `model.onnx` (image in, class probabilities out) on new
//! image files, with the same preprocessing the training images went
//! through:
//!
//! 1. [`imaging::decode_upright`]: decode, apply the EXIF orientation, RGB8;
//! 2. [`imaging::resize_to_stored`]: the stored size and filter ingestion
//!    used (the model's [`spec::META_STORED`] metadata; skipped when the
//!    model does not carry it), with ingestion's bounds: never enlarged,
//!    too-elongated images refused;
//! 3. [`imaging::preprocess::preprocess_into`]: the model's resize, crop,
//!    channel order, normalisation and layout (its `preprocess` and `input`
//!    metadata).
//!
//! The model runs in ONNX Runtime 1.32 ([`runtime::init_ort`]), in batches.
//! What a model must carry is [`spec::InferenceMetadata`].
//!
//! ```no_run
//! let mut predictor = predict::load("out/model.onnx".as_ref(), 0)?;
//! for result in predictor.predict_images(&["cat.jpg".into()], 16) {
//!     match result {
//!         Ok(p) => println!("{}: {:?}", p.path.display(), p.top_k(3)),
//!         Err(e) => eprintln!("{e}"),
//!     }
//! }
//! # Ok::<(), predict::PredictError>(())
//! ```

pub mod inputs;
pub mod output;

use std::path::{Path, PathBuf};

use progress::{Progress, Silent};
use rayon::prelude::*;
use runtime::ort;
use runtime::ort::session::builder::GraphOptimizationLevel;
use runtime::ort::session::Session;
use runtime::{ModelSource, SessionOptions};
use spec::{InferenceMetadata, MetadataError};

pub use inputs::{collect_images, is_image_path};
pub use output::Format;

/// The model file's name inside a folder given as the model path.
pub const MODEL_FILE: &str = "model.onnx";
/// Where a run folder keeps its fine-tuned model, relative to the folder.
pub const FINETUNE_MODEL: &str = "finetune/model.onnx";
/// Where a run folder keeps the conv base + trained head (every run has
/// it; the fine-tuned one wins when both exist).
pub const HEAD_MODEL: &str = "head/model.onnx";

/// How many preprocessed batches may wait for ONNX Runtime in
/// [`Predictor::predict_each`]: enough to keep it busy, few enough that
/// memory does not depend on the number of images.
pub const BATCHES_AHEAD: usize = 2;

/// Everything that stops a prediction run as a whole.
#[derive(Debug, thiserror::Error)]
pub enum PredictError {
    #[error(
        "no model at {0} (looked for the file itself, and {MODEL_FILE}, {FINETUNE_MODEL} and {HEAD_MODEL} inside it)"
    )]
    ModelMissing(PathBuf),
    #[error("cannot read the model {path}: {source}")]
    ModelRead {
        path: PathBuf,
        #[source]
        source: onnx_graph::GraphError,
    },
    #[error("the model {path} lacks inference metadata: {source}")]
    Metadata { path: PathBuf, source: MetadataError },
    #[error("the model {path} does not match its metadata: {message}")]
    Mismatch { path: PathBuf, message: String },
    #[error(transparent)]
    Runtime(#[from] runtime::RuntimeError),
}

pub type Result<T, E = PredictError> = std::result::Result<T, E>;

/// One input that could not be predicted, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {reason}", path.display())]
pub struct ImageError {
    pub path: PathBuf,
    pub reason: String,
}

impl ImageError {
    pub fn new(path: impl Into<PathBuf>, reason: impl Into<String>) -> ImageError {
        ImageError { path: path.into(), reason: reason.into() }
    }
}

/// The model's output for one image.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub path: PathBuf,
    /// One probability per class, in the metadata's `class_names` order.
    pub probabilities: Vec<f32>,
}

impl Prediction {
    /// The `k` most probable classes as `(class index, probability)`,
    /// most probable first (ties: lower index first). At most as many as
    /// there are classes.
    pub fn top_k(&self, k: usize) -> Vec<(usize, f32)> {
        let mut ranked: Vec<(usize, f32)> = self.probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        ranked.truncate(k);
        ranked
    }
}

/// Finds the model file: `path` itself if it is a file, else
/// `path/model.onnx`, else a run folder's `finetune/model.onnx`, else its
/// `head/model.onnx`.
pub fn find_model(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.is_dir() {
        for candidate in [MODEL_FILE, FINETUNE_MODEL, HEAD_MODEL].map(|file| path.join(file)) {
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(PredictError::ModelMissing(path.to_path_buf()))
}

/// Reads the inference metadata of a model file (no ONNX Runtime).
pub fn read_metadata(model: &Path) -> Result<InferenceMetadata> {
    let proto = onnx_graph::read_model(model)
        .map_err(|source| PredictError::ModelRead { path: model.to_path_buf(), source })?;
    metadata_of(model, &proto)
}

fn metadata_of(path: &Path, proto: &onnx_graph::ModelProto) -> Result<InferenceMetadata> {
    InferenceMetadata::from_lookup(|key| onnx_graph::metadata(proto, key))
        .map_err(|source| PredictError::Metadata { path: path.to_path_buf(), source })
}

/// Reads an image file and prepares it for the model described by
/// `metadata` ([`preprocess_bytes`] with [`spec::DEFAULT_MAX_PIXELS`]).
pub fn preprocess_file(path: &Path, metadata: &InferenceMetadata) -> Result<Vec<f32>, ImageError> {
    preprocess_path(path, metadata, spec::DEFAULT_MAX_PIXELS)
}

fn preprocess_path(path: &Path, metadata: &InferenceMetadata, max_pixels: u64) -> Result<Vec<f32>, ImageError> {
    let bytes = read_image_file(path, imaging::max_file_bytes(max_pixels))?;
    preprocess_bytes(&bytes, metadata, max_pixels).map_err(|reason| ImageError::new(path, reason))
}

/// Reads an image file after checking, before opening it, that it is a
/// regular file (after following symlinks) of at most `max_bytes` bytes
/// ([`imaging::check_file`]): a FIFO, socket, device or `/dev/zero` link
/// is refused by name instead of blocking or filling memory. The read is
/// bounded too, in case the file grows or is swapped after the check.
fn read_image_file(path: &Path, max_bytes: u64) -> Result<Vec<u8>, ImageError> {
    use std::io::Read;
    let cannot = |e: std::io::Error| ImageError::new(path, format!("cannot read: {e}"));
    let meta = std::fs::metadata(path).map_err(cannot)?;
    imaging::check_file(&meta, max_bytes).map_err(|(_, reason)| ImageError::new(path, reason))?;
    let file = std::fs::File::open(path).map_err(cannot)?;
    let opened = file.metadata().map_err(cannot)?;
    imaging::check_file(&opened, max_bytes).map_err(|(_, reason)| ImageError::new(path, reason))?;
    let mut bytes = Vec::with_capacity(usize::try_from(opened.len()).unwrap_or(0));
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > max_bytes {
        return Err(ImageError::new(path, format!("file too large: grew past {max_bytes} bytes while being read")));
    }
    Ok(bytes)
}

/// Encoded image bytes → the model's input values for one image
/// (`3 × width × height` f32 in the metadata's layout): decode upright
/// (EXIF orientation), resize to the stored size when the metadata says
/// how training images were stored, then the model's preprocessing. Pure.
/// The error is a human reason.
pub fn preprocess_bytes(bytes: &[u8], metadata: &InferenceMetadata, max_pixels: u64) -> Result<Vec<f32>, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let upright = imaging::decode_upright(bytes, max_pixels).map_err(|(_, reason)| reason)?;
    let stored = match metadata.stored {
        Some(stored) => {
            imaging::resize_to_stored(upright, stored.size, stored.filter, max_pixels).map_err(|(_, reason)| reason)?
        }
        None => upright,
    };
    let mut out = vec![0f32; imaging::preprocess::input_len(&metadata.input)];
    imaging::preprocess::preprocess_into(
        stored.as_raw(),
        stored.dimensions(),
        &metadata.preprocess,
        &metadata.input,
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The input tensor's dims for `batch` images.
fn input_dims(metadata: &InferenceMetadata, batch: usize) -> Vec<i64> {
    imaging::preprocess::batch_shape(&metadata.input, batch).map(|d| d as i64).to_vec()
}

/// An ONNX Runtime session on an exported model, with its metadata.
pub struct Predictor {
    session: Session,
    metadata: InferenceMetadata,
    path: PathBuf,
    output_name: String,
    max_pixels: u64,
}

/// Loads the model at `model` (a file, or a folder holding `model.onnx` or
/// `finetune/model.onnx`), reads its [`InferenceMetadata`] and builds an
/// ONNX Runtime session with `threads` intra-op threads (0: ONNX Runtime's
/// default). See [`Predictor::load`].
pub fn load(model: &Path, threads: usize) -> Result<Predictor> {
    Predictor::load(model, threads)
}

impl Predictor {
    /// See [`load`]. Checks that the graph has one input, named as the
    /// metadata says, and one output, with as many classes as the metadata
    /// names (when its shape says).
    pub fn load(model: &Path, threads: usize) -> Result<Predictor> {
        let path = find_model(model)?;
        let unreadable = |source| PredictError::ModelRead { path: path.clone(), source };
        let proto = onnx_graph::read_model(&path).map_err(unreadable)?;
        let metadata = metadata_of(&path, &proto)?;
        let mismatch = |message: String| PredictError::Mismatch { path: path.clone(), message };
        let graph_inputs = onnx_graph::inputs(&proto).map_err(unreadable)?;
        let input_names: Vec<&str> = graph_inputs.iter().map(|i| i.name.as_str()).collect();
        if input_names != [metadata.input.name.as_str()] {
            return Err(mismatch(format!(
                "the metadata's input is {:?}, the graph's inputs are {input_names:?}",
                metadata.input.name
            )));
        }
        let output = match onnx_graph::outputs(&proto).map_err(unreadable)?.as_slice() {
            [output] => output.clone(),
            other => return Err(mismatch(format!("the graph has {} outputs, expected one", other.len()))),
        };
        let classes = metadata.class_names.len();
        let declared = output.dims.as_deref().and_then(|dims| dims.last()).and_then(onnx_graph::Dim::fixed);
        if declared.is_some_and(|n| n != classes as i64) {
            return Err(mismatch(format!(
                "the output {:?} has {} classes, the metadata names {classes}",
                output.name,
                declared.unwrap_or_default()
            )));
        }
        let output_name = output.name;
        drop(proto);

        let options = SessionOptions::default().optimization(GraphOptimizationLevel::All).intra_threads(threads);
        let session = runtime::open_session(&options, ModelSource::File(&path))?;
        Ok(Predictor { session, metadata, path, output_name, max_pixels: spec::DEFAULT_MAX_PIXELS })
    }

    /// Images declaring more pixels than this are refused before decoding
    /// (default [`spec::DEFAULT_MAX_PIXELS`]).
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Predictor {
        self.max_pixels = max_pixels;
        self
    }

    pub fn metadata(&self) -> &InferenceMetadata {
        &self.metadata
    }

    /// The model file in use.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Predicts every image, `batch` at a time (decoding in parallel), and
    /// returns one result per path, in order. A file that cannot be read or
    /// decoded is an [`ImageError`] and does not affect the others; so is
    /// every image of a batch that ONNX Runtime fails on. Holds every
    /// result: for many images, [`Predictor::predict_each`] streams them.
    pub fn predict_images(&mut self, paths: &[PathBuf], batch: usize) -> Vec<Result<Prediction, ImageError>> {
        let mut results = Vec::with_capacity(paths.len());
        let collected: Result<(), std::convert::Infallible> = self.predict_each(paths, batch, &Silent, |result| {
            results.push(result);
            Ok(())
        });
        match collected {
            Ok(()) => results,
            Err(never) => match never {},
        }
    }

    /// Like [`Predictor::predict_images`], but hands each result to `each`
    /// as soon as its batch has run, in path order, and keeps none: memory
    /// stays flat however many paths there are. A producer thread reads
    /// and preprocesses the next batch (in parallel) while ONNX Runtime
    /// runs the current one; at most [`BATCHES_AHEAD`] prepared batches
    /// wait between them. `progress` advances by one per image handed
    /// over. The first error `each` returns stops the run and is returned.
    pub fn predict_each<E>(
        &mut self,
        paths: &[PathBuf],
        batch: usize,
        progress: &dyn Progress,
        mut each: impl FnMut(Result<Prediction, ImageError>) -> Result<(), E>,
    ) -> Result<(), E> {
        let metadata = self.metadata.clone();
        let max_pixels = self.max_pixels;
        let chunks = paths.chunks(batch.max(1));
        let to_prepare = chunks.clone();
        let (sender, receiver) = std::sync::mpsc::sync_channel::<Vec<Result<Vec<f32>, ImageError>>>(BATCHES_AHEAD);
        std::thread::scope(|scope| {
            scope.spawn(move || {
                for chunk in to_prepare {
                    let prepared = chunk.par_iter().map(|path| preprocess_path(path, &metadata, max_pixels)).collect();
                    // The receiver is gone when `each` failed: stop reading.
                    if sender.send(prepared).is_err() {
                        break;
                    }
                }
            });
            for (chunk, prepared) in chunks.zip(receiver) {
                let good: Vec<&[f32]> = prepared.iter().filter_map(|r| r.as_ref().ok()).map(Vec::as_slice).collect();
                let mut rows = match self.run(&good) {
                    Ok(rows) => rows.into_iter().map(Ok).collect::<Vec<_>>().into_iter(),
                    Err(reason) => vec![Err(reason); good.len()].into_iter(),
                };
                drop(good);
                for (path, input) in chunk.iter().zip(prepared) {
                    let result = match input {
                        Err(e) => Err(e),
                        // `run` gives one row per image or fails for all.
                        Ok(_) => match rows.next() {
                            Some(Ok(probabilities)) => Ok(Prediction { path: path.clone(), probabilities }),
                            Some(Err(reason)) => Err(ImageError::new(path, reason)),
                            None => Err(ImageError::new(path, "ONNX Runtime returned fewer rows than images")),
                        },
                    };
                    each(result)?;
                    progress.advance(1);
                }
            }
            Ok(())
        })
    }

    /// Runs one batch of preprocessed images (each as [`preprocess_file`]
    /// gives it: `3 × width × height` values); one probability row each.
    /// The error is a human reason.
    pub fn run(&mut self, images: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let per_image = imaging::preprocess::input_len(&self.metadata.input);
        if let Some(bad) = images.iter().find(|i| i.len() != per_image) {
            return Err(format!("an input holds {} values, the model takes {per_image} per image", bad.len()));
        }
        let data: Vec<f32> = images.concat();
        let dims = input_dims(&self.metadata, images.len());
        let classes = self.metadata.class_names.len();
        let model = self.path.display().to_string();
        let failed = |e: ort::Error| format!("ONNX Runtime failed on {model}: {e}");
        let value = ort::value::Tensor::from_array((dims, data)).map_err(failed)?;
        let outputs = self.session.run(ort::inputs![self.metadata.input.name.as_str() => value]).map_err(failed)?;
        let (shape, values) = outputs[self.output_name.as_str()].try_extract_tensor::<f32>().map_err(failed)?;
        if **shape != [images.len() as i64, classes as i64] {
            return Err(format!(
                "the model's output {:?} has shape {shape:?}, expected [{}, {classes}] ({classes} class names)",
                self.output_name,
                images.len()
            ));
        }
        Ok(values.chunks(classes).map(<[f32]>::to_vec).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_descending_with_stable_ties() {
        let p = Prediction { path: "x".into(), probabilities: vec![0.1, 0.4, 0.1, 0.4] };
        assert_eq!(p.top_k(3), vec![(1, 0.4), (3, 0.4), (0, 0.1)]);
        assert_eq!(p.top_k(10).len(), 4);
        assert!(p.top_k(0).is_empty());
    }

    #[test]
    fn image_error_reads_path_colon_reason() {
        assert_eq!(ImageError::new("a/b.png", "corrupt").to_string(), "a/b.png: corrupt");
    }
}
