//! Extraction: what the cache lacks goes through the conv base.
//!
//! Two threads: a producer reads the dataset in batches (pixels included),
//! keeps the rows whose vectors are missing, preprocesses them into the
//! next input tensor and hands it over a bounded channel (two tensors deep);
//! the calling thread runs ONNX Runtime on the current tensor, pools the
//! output and commits it to the cache as one segment. A vector that is not
//! finite (or does not fit f16 storage) is not stored: its image is
//! recorded as rejected, named in the summary, and left out by the readers. So decoding and
//! preprocessing overlap inference, and memory holds at most a few batches.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::mpsc;
use std::time::Instant;

use contracts::features::{CacheKey, Dtype, RejectedImage};
use dataset::{Dataset, Split};
use feature_cache::{FeatureCache, Index, Quarantined, Store};
use models::ResolvedModel;
use ndarray::ArrayView2;
use progress::Progress;
use runtime::ort;
use runtime::ort::session::builder::GraphOptimizationLevel;
use runtime::ort::session::Session;
use runtime::ort::value::{TensorElementType, TensorRef, ValueType};
use runtime::{ModelSource, SessionOptions};
use serde::{Deserialize, Serialize};
use spec::{Layout, Pooling};

use imaging::preprocess::{batch_shape, input_len, preprocess_into};

use crate::pool::pool_into;
use crate::FeaturesError;

/// Images per inference batch unless told otherwise.
pub const DEFAULT_BATCH_SIZE: usize = 16;

/// How to extract. `Default` is batch 16, the spec's pooling, f32, every
/// split that has rows, one ONNX Runtime thread per available core.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractOptions {
    /// Images per inference batch (and per committed cache segment).
    pub batch_size: usize,
    /// Overrides the model spec's `conv_base.pooling`.
    pub pooling: Option<Pooling>,
    pub dtype: Dtype,
    /// The splits to extract; `None` is every split with rows. A chosen
    /// split without rows is an error.
    pub splits: Option<Vec<Split>>,
    /// ONNX Runtime intra-op threads; `None` is the number of available cores.
    pub threads: Option<usize>,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions { batch_size: DEFAULT_BATCH_SIZE, pooling: None, dtype: Dtype::F32, splits: None, threads: None }
    }
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtractSummary {
    pub key: CacheKey,
    /// The key's folder in the cache.
    pub store: std::path::PathBuf,
    /// Rows per extracted split.
    pub rows: BTreeMap<Split, usize>,
    /// Distinct images whose vectors were already cached.
    pub hits: usize,
    /// Distinct images computed by this run.
    pub computed: usize,
    /// Wall time of the whole call.
    pub seconds: f64,
    /// Wall time from the first inference to the last commit.
    pub inference_seconds: f64,
    /// ONNX Runtime intra-op threads used.
    pub threads: usize,
    /// Cache files found bad and moved aside (their vectors were recomputed).
    pub quarantined: Vec<Quarantined>,
    /// Images without a usable vector (this run's and earlier runs'),
    /// sorted by content id; counted neither in `hits` nor in `computed`.
    pub rejected: Vec<RejectedImage>,
    /// Problems that did not stop the run (a failed compaction).
    pub warnings: Vec<String>,
}

impl ExtractSummary {
    /// Images computed per second of inference (0 when nothing was computed).
    pub fn images_per_second(&self) -> f64 {
        if self.computed == 0 || self.inference_seconds <= 0.0 {
            0.0
        } else {
            self.computed as f64 / self.inference_seconds
        }
    }
}

/// One preprocessed batch on its way to inference.
struct Batch {
    ids: Vec<String>,
    /// The images' paths as the dataset records them, for messages.
    paths: Vec<String>,
    input: Vec<f32>,
}

/// Computes and caches the vectors of every row of the chosen splits that
/// the cache does not hold yet; reports hits and computed rows.
pub fn extract(
    dataset: &Dataset,
    model: &ResolvedModel,
    cache: &FeatureCache,
    options: &ExtractOptions,
    progress: &dyn Progress,
) -> Result<ExtractSummary, FeaturesError> {
    let started = Instant::now();
    let splits = chosen_splits(dataset, options.splits.as_deref())?;
    let pooling = options.pooling.unwrap_or(model.spec.conv_base.pooling);
    let shape = model.spec.conv_base.shape;
    if shape.is_pooled() && pooling != Pooling::Flatten {
        // Identity on [C, 1, 1], but a second cache key for the same vectors
        // and a head composed with a pooling op the 2-D output cannot take.
        return Err(FeaturesError::AlreadyPooled { name: model.spec.name.clone(), shape, pooling });
    }
    let key = feature_cache::cache_key(dataset.info(), &model.spec, &model.fingerprint, pooling, options.dtype);
    let store = cache.store(&key)?;
    let index = store.scan()?;
    let mut lookup = look_up(dataset, &splits, &index)?;
    let threads = options.threads.unwrap_or_else(available_cores).max(1);
    let mut summary = ExtractSummary {
        key,
        store: store.dir().to_path_buf(),
        rows: lookup.rows,
        hits: lookup.hits,
        computed: 0,
        seconds: 0.0,
        inference_seconds: 0.0,
        threads,
        quarantined: index.quarantined().to_vec(),
        rejected: Vec::new(),
        warnings: Vec::new(),
    };
    // A compaction skipped earlier (the folder was busy) is caught up on.
    let mut compact = index.wants_compaction();
    drop(index);
    if !lookup.missing.is_empty() {
        let job = Job { dataset, model, splits: &splits, missing: &lookup.missing, pooling, threads, store: &store };
        let done = job.run(options.batch_size.max(1), progress)?;
        (summary.computed, summary.inference_seconds) = (done.computed, done.inference_seconds);
        lookup.rejected.extend(done.rejected);
        compact = true;
    }
    // Merging small segments only saves files; the vectors are committed.
    // It runs only if no other process uses the folder (it deletes segments).
    if compact {
        if let Err(e) = store.compact() {
            summary.warnings.push(format!("compacting the cache failed (harmless): {e}"));
        }
    }
    lookup.rejected.sort_by(|a, b| a.content_id.cmp(&b.content_id));
    summary.rejected = lookup.rejected;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// What the cache holds of the chosen splits.
struct Lookup {
    /// Rows per split.
    rows: BTreeMap<Split, usize>,
    /// Distinct content ids the cache lacks.
    missing: HashSet<String>,
    /// Distinct content ids already cached.
    hits: usize,
    /// Distinct images rejected by an earlier run.
    rejected: Vec<RejectedImage>,
}

/// Reads the splits' index columns (no pixels) and checks each distinct
/// content id against the cache's index. An image in several splits counts once.
fn look_up(dataset: &Dataset, splits: &[Split], index: &Index) -> Result<Lookup, FeaturesError> {
    let mut lookup = Lookup { rows: BTreeMap::new(), missing: HashSet::new(), hits: 0, rejected: Vec::new() };
    let mut seen: HashSet<String> = HashSet::new();
    for &split in splits {
        let records = dataset.index(split)?;
        lookup.rows.insert(split, records.len());
        for record in records {
            if !seen.insert(record.content_id.clone()) {
                continue;
            }
            if index.contains(&record.content_id) {
                lookup.hits += 1;
            } else if let Some(reason) = index.rejection(&record.content_id) {
                let reason = reason.to_owned();
                lookup.rejected.push(RejectedImage { content_id: record.content_id, path: record.path, reason });
            } else {
                lookup.missing.insert(record.content_id);
            }
        }
    }
    Ok(lookup)
}

/// The missing vectors of one extraction and where they go.
struct Job<'a> {
    dataset: &'a Dataset,
    model: &'a ResolvedModel,
    splits: &'a [Split],
    missing: &'a HashSet<String>,
    pooling: Pooling,
    threads: usize,
    store: &'a Store,
}

/// What [`Job::run`] did.
struct Done {
    /// Vectors computed and stored.
    computed: usize,
    inference_seconds: f64,
    /// Images whose vectors were refused (and recorded as such in the cache).
    rejected: Vec<RejectedImage>,
}

impl Job<'_> {
    /// Runs the producer thread and inference on this one, committing one
    /// segment per batch (and the batch's rejected images, if any).
    fn run(&self, batch_size: usize, progress: &dyn Progress) -> Result<Done, FeaturesError> {
        let (tx, rx) = mpsc::sync_channel::<Result<Batch, FeaturesError>>(2);
        std::thread::scope(|scope| {
            scope.spawn(move || produce(self.dataset, self.model, self.splits, self.missing, batch_size, tx));
            // The session is built while the producer prepares the first batch.
            let mut conv_base = ConvBase::open(self.model, self.pooling, self.threads)?;
            let embedding_len = self.store.key().embedding_len;
            progress.start("extracting", self.missing.len() as u64);
            let dtype = self.store.key().dtype;
            let mut done = Done { computed: 0, inference_seconds: 0.0, rejected: Vec::new() };
            let mut first: Option<Instant> = None;
            for batch in rx {
                let batch = batch?;
                first.get_or_insert_with(Instant::now);
                let vectors = conv_base.run(&batch.input, batch.ids.len())?;
                let (mut ids, mut kept, mut rejected) = (Vec::new(), Vec::new(), Vec::new());
                for ((id, path), vector) in batch.ids.into_iter().zip(batch.paths).zip(vectors.chunks(embedding_len)) {
                    match feature_cache::vector_problem(vector, dtype) {
                        None => {
                            ids.push(id);
                            kept.extend_from_slice(vector);
                        }
                        Some(reason) => rejected.push(RejectedImage { content_id: id, path, reason }),
                    }
                }
                let n = ids.len() + rejected.len();
                if !ids.is_empty() {
                    let view = ArrayView2::from_shape((ids.len(), embedding_len), &kept).map_err(|e| {
                        feature_cache::CacheError::Cache {
                            path: self.store.dir().to_path_buf(),
                            reason: format!("internal: pooled vectors do not have the key's length: {e}"),
                        }
                    })?;
                    self.store.append(&ids, view)?;
                }
                if !rejected.is_empty() {
                    let pairs: Vec<(String, String)> =
                        rejected.iter().map(|r| (r.content_id.clone(), r.reason.clone())).collect();
                    self.store.reject(&pairs)?;
                    done.rejected.extend(rejected);
                }
                done.computed += ids.len();
                progress.advance(n as u64);
            }
            progress.finish();
            done.inference_seconds = first.map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
            Ok(done)
        })
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn chosen_splits(dataset: &Dataset, chosen: Option<&[Split]>) -> Result<Vec<Split>, FeaturesError> {
    let rows_note = || Split::ALL.iter().map(|&s| format!("{s} {}", dataset.rows(s))).collect::<Vec<_>>().join(", ");
    let empty = |split| FeaturesError::EmptySplit { dataset: dataset.dir().to_path_buf(), split, rows: rows_note() };
    match chosen {
        Some(splits) => {
            let mut out = Vec::new();
            for &split in splits {
                if dataset.rows(split) == 0 {
                    return Err(empty(split));
                }
                if !out.contains(&split) {
                    out.push(split);
                }
            }
            Ok(out)
        }
        None => {
            let out: Vec<Split> = Split::ALL.into_iter().filter(|&s| dataset.rows(s) > 0).collect();
            if out.is_empty() {
                return Err(empty(Split::Train));
            }
            Ok(out)
        }
    }
}

/// The producer: missing rows, in dataset order, preprocessed into batches.
fn produce(
    dataset: &Dataset,
    model: &ResolvedModel,
    splits: &[Split],
    missing: &HashSet<String>,
    batch_size: usize,
    tx: mpsc::SyncSender<Result<Batch, FeaturesError>>,
) {
    let spec = &model.spec;
    let per_image = input_len(&spec.input);
    let new_batch = || Batch {
        ids: Vec::with_capacity(batch_size),
        paths: Vec::with_capacity(batch_size),
        input: Vec::with_capacity(batch_size * per_image),
    };
    let mut batch = new_batch();
    let mut sent: HashSet<&str> = HashSet::new();
    for &split in splits {
        for records in dataset.batches(split, batch_size, true) {
            let records = match records {
                Ok(records) => records,
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            };
            for record in records {
                let Some(id) = missing.get(&record.content_id) else { continue };
                if !sent.insert(id.as_str()) {
                    continue;
                }
                let start = batch.input.len();
                batch.input.resize(start + per_image, 0.0);
                let size = (record.stored_width, record.stored_height);
                if let Err(source) =
                    preprocess_into(&record.pixels, size, &spec.preprocess, &spec.input, &mut batch.input[start..])
                {
                    let _ = tx.send(Err(FeaturesError::BadRecord {
                        dataset: dataset.dir().to_path_buf(),
                        content_id: record.content_id,
                        source,
                    }));
                    return;
                }
                batch.ids.push(record.content_id);
                batch.paths.push(record.path);
                if batch.ids.len() == batch_size && tx.send(Ok(std::mem::replace(&mut batch, new_batch()))).is_err() {
                    return; // inference failed; it reports why
                }
            }
        }
    }
    if !batch.ids.is_empty() {
        let _ = tx.send(Ok(batch));
    }
}

/// An ONNX Runtime session on a model's conv base, checked against its
/// spec: preprocessed images in, pooled vectors out. [`extract`] uses it;
/// so can a stage that embeds new images without caching them.
pub struct ConvBase<'m> {
    session: Session,
    model: &'m ResolvedModel,
    pooling: Pooling,
}

fn ort_error(path: &Path) -> impl Fn(ort::Error) -> FeaturesError + '_ {
    move |source| FeaturesError::Ort { model: path.to_path_buf(), source }
}

impl<'m> ConvBase<'m> {
    /// Builds the session (graph optimisation level "all", which includes
    /// the layout optimisations; `threads` intra-op threads, one inter-op
    /// thread) and checks its input and output against the spec: the input's
    /// name, element type and layout (3 channels on the spec's channel
    /// axis), and that the conv-base output exists.
    pub fn open(model: &'m ResolvedModel, pooling: Pooling, threads: usize) -> Result<ConvBase<'m>, FeaturesError> {
        let options =
            SessionOptions::default().optimization(GraphOptimizationLevel::All).intra_threads(threads).inter_threads(1);
        let session = runtime::open_session(&options, ModelSource::File(&model.conv_base))?;
        let runner = ConvBase { session, model, pooling };
        runner.check_input()?;
        runner.check_output()?;
        Ok(runner)
    }

    fn check_input(&self) -> Result<(), FeaturesError> {
        let spec = &self.model.spec;
        let fail = |message: String| FeaturesError::Input {
            model: self.model.conv_base.clone(),
            name: spec.name.clone(),
            message,
        };
        let inputs = self.session.inputs();
        let described: Vec<String> = inputs.iter().map(|i| format!("'{}' {}", i.name(), describe(i.dtype()))).collect();
        let Some(input) = inputs.iter().find(|i| i.name() == spec.input.name) else {
            return Err(fail(format!(
                "the spec's input '{}' is not an input of the model (inputs: {})",
                spec.input.name,
                described.join(", ")
            )));
        };
        if inputs.len() != 1 {
            return Err(fail(format!(
                "the model has {} inputs ({}); a conv base takes one image",
                inputs.len(),
                described.join(", ")
            )));
        }
        let ValueType::Tensor { ty, shape, .. } = input.dtype() else {
            return Err(fail(format!("input '{}' is not a tensor", spec.input.name)));
        };
        if *ty != TensorElementType::Float32 {
            return Err(fail(format!("input '{}' is {ty:?}, expected float32", spec.input.name)));
        }
        let dims: &[i64] = shape;
        let channel_axis = match spec.input.layout {
            Layout::Nchw => 1,
            Layout::Nhwc => 3,
        };
        let layout_name = match spec.input.layout {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        };
        // The channel axis must hold 3 (or be free while the other layout's
        // channel axis does not hold 3: a model with free dims everywhere).
        let other_axis = 4 - channel_axis;
        let channels_ok = |axis: usize| dims.get(axis).is_some_and(|&d| d == 3);
        let free = |axis: usize| dims.get(axis).is_some_and(|&d| d < 0);
        if dims.len() != 4 || !(channels_ok(channel_axis) || (free(channel_axis) && !channels_ok(other_axis))) {
            return Err(fail(format!(
                "input '{}' has shape {dims:?}, which is not {layout_name} with 3 channels (the spec's layout)",
                spec.input.name
            )));
        }
        Ok(())
    }

    fn check_output(&self) -> Result<(), FeaturesError> {
        let spec = &self.model.spec;
        let outputs = self.session.outputs();
        if !outputs.iter().any(|o| o.name() == spec.conv_base.output) {
            return Err(FeaturesError::UnknownOutput {
                model: self.model.conv_base.clone(),
                name: spec.name.clone(),
                output: spec.conv_base.output.clone(),
                available: outputs.iter().map(|o| o.name().to_string()).collect(),
            });
        }
        Ok(())
    }

    /// Values per output vector.
    pub fn embedding_len(&self) -> usize {
        self.pooling.pooled_len(self.model.spec.conv_base.shape)
    }

    /// Runs `n` preprocessed images (`n` × [`input_len`] values, see
    /// [`imaging::preprocess`]); returns their pooled vectors, row after row.
    pub fn run(&mut self, input: &[f32], n: usize) -> Result<Vec<f32>, FeaturesError> {
        let spec = &self.model.spec;
        assert_eq!(input.len(), n * input_len(&spec.input), "input holds {n} images");
        let [w, h] = spec.input.size.map(|v| v as usize);
        let shape = batch_shape(&spec.input, n);
        let err = ort_error(&self.model.conv_base);
        let tensor = TensorRef::from_array_view((shape, input)).map_err(&err)?;
        let outputs = self.session.run(ort::inputs![spec.input.name.as_str() => tensor]).map_err(&err)?;
        let value = &outputs[spec.conv_base.output.as_str()];
        let (out_shape, data) = value.try_extract_tensor::<f32>().map_err(&err)?;
        let dims: Vec<usize> = out_shape.iter().map(|&d| d.max(0) as usize).collect();
        let shape = spec.conv_base.shape;
        // `[N, C]` for an already pooled output, `[N, C, H, W]` for a map.
        let expected: Vec<usize> = std::iter::once(n).chain(shape.dims()).collect();
        if dims != expected {
            return Err(FeaturesError::OutputShape {
                model: self.model.conv_base.clone(),
                name: spec.name.clone(),
                message: format!(
                    "output '{}' has shape {dims:?} for {n} images of {w}x{h}, the spec says {expected:?}",
                    spec.conv_base.output
                ),
            });
        }
        let map = shape.as_map();
        let mut vectors = Vec::with_capacity(n * self.pooling.pooled_len(shape));
        for one in data.chunks_exact(shape.len()) {
            pool_into(one, map, self.pooling, &mut vectors);
        }
        Ok(vectors)
    }
}

fn describe(value_type: &ValueType) -> String {
    match value_type {
        ValueType::Tensor { ty, shape, .. } => format!("{ty:?}{:?}", &shape[..]),
        other => format!("{other:?}"),
    }
}
