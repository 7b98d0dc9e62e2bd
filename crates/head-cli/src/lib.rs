//! The head stage's work, as library calls the `head` binary makes: train
//! on the features stage's output (`features.json` and the cache it names,
//! through the `feature-cache` crate) and write the head, its metrics and
//! `model.onnx` ([`export`]); evaluate or predict a split. The head's math
//! is the `head` library, which knows no files but its own.

pub mod export;

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use contracts::features::FEATURES_FILE;
use dataset::{Dataset, Split};
use feature_cache::Store;
use head::io::{self, MetricsLog};
use head::{BatchSource, HeadConfig, TrainedHead};
use ndarray::{Array2, ArrayView2, ArrayViewMut2};

/// The settings in `path` (the `[head]` fields), or the defaults.
pub fn read_config(path: Option<&Path>) -> Result<HeadConfig> {
    let Some(path) = path else { return Ok(HeadConfig::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(spec::parse_toml::<HeadConfig>(&text).map_err(|e| e.in_file("head settings", path))?)
}

/// Loads the head in `head_dir`, checks it against the features in
/// `features_dir`, and opens them.
fn open(head_dir: &Path, features_dir: &Path) -> Result<(TrainedHead, Dataset, Store)> {
    let head = io::load(head_dir).with_context(|| format!("loading the head from {}", head_dir.display()))?;
    let (dataset, store) = open_features(features_dir, &head)?;
    Ok((head, dataset, store))
}

/// Metrics of the head in `head_dir` on one split (top-1 and each of
/// `top_k`), printed as a table and written as JSON to `out` when given.
/// A split over `memory_budget` bytes of embeddings is streamed.
pub fn evaluate(
    head_dir: &Path,
    features_dir: &Path,
    split: Split,
    top_k: &[usize],
    out: Option<&Path>,
    memory_budget: usize,
) -> Result<()> {
    let (head, dataset, store) = open(head_dir, features_dir)?;
    let index = store.scan()?;
    let mut rows = SplitRows::open(&dataset, &store, &index, split, head.model.input_dim(), memory_budget)?;
    let report = head.evaluate_source(&mut rows, top_k).map_err(|e| anyhow!("{split} split: {e}"))?;
    println!("{split} split, {} images\n{report}", rows.len());
    if let Some(out) = out {
        io::write_report(out, &report)?;
    }
    Ok(())
}

/// The `top_k` classes with probabilities for every row of a split, as CSV
/// to `out` (standard output when `None`), written as the rows are scored:
/// a split over `memory_budget` bytes of embeddings is streamed.
pub fn predict(
    head_dir: &Path,
    features_dir: &Path,
    split: Split,
    top_k: usize,
    out: Option<&Path>,
    memory_budget: usize,
) -> Result<()> {
    let (head, dataset, store) = open(head_dir, features_dir)?;
    let index = store.scan()?;
    let mut rows = SplitRows::open(&dataset, &store, &index, split, head.model.input_dim(), memory_budget)?;
    let records = rows.take_records();
    let classes = &head.meta.class_names;
    let mut score = |w: &mut dyn std::io::Write| -> Result<()> {
        let mut csv = PredictionWriter::new(w, classes, top_k)?;
        head.predict_proba_batches(&mut rows, &mut |first, probs| {
            csv.write(&records[first..first + probs.nrows()], probs)?;
            Ok(())
        })
        .map_err(|e| anyhow!("{split} split: {e}"))?;
        csv.finish()
    };
    match out {
        // Whole or not at all: rows go to a temporary sibling, renamed into
        // place once complete, so a killed run leaves no half-written CSV.
        Some(path) => {
            let partial = atomic_file::partial_path(path);
            let written = write_then_sync(&partial, &mut score);
            match written.and_then(|()| Ok(atomic_file::rename(&partial, path)?)) {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    Err(e.context(format!("writing the predictions {}", path.display())))
                }
            }
        }
        None => score(&mut std::io::stdout().lock()),
    }
}

/// Runs `write` on a new file at `path`, then flushes and syncs it.
fn write_then_sync(path: &Path, write: &mut dyn FnMut(&mut dyn std::io::Write) -> Result<()>) -> Result<()> {
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut buffered = std::io::BufWriter::new(file);
    write(&mut buffered)?;
    let file =
        buffered.into_inner().map_err(|e| e.into_error()).with_context(|| format!("writing {}", path.display()))?;
    file.sync_all().with_context(|| format!("syncing {}", path.display()))
}

/// Opens the dataset and cache a `features.json` names, checking that they
/// belong to the classes the head was trained on.
fn open_features(dir: &Path, head: &TrainedHead) -> Result<(Dataset, Store)> {
    let info = feature_cache::read_features(dir)?;
    if info.dataset.classes != head.meta.class_names {
        bail!(
            "{}: classes {:?} differ from the head's {:?}",
            dir.join(FEATURES_FILE).display(),
            info.dataset.classes,
            head.meta.class_names
        );
    }
    if info.embedding_len != head.model.input_dim() {
        bail!("embeddings have {} values, the head expects {}", info.embedding_len, head.model.input_dim());
    }
    Ok(feature_cache::open_features(&info)?)
}

/// Trains on the train split (validation for early stopping) and writes
/// the head, `metrics.jsonl`, `head.onnx`, the test evaluation and the
/// checked `model.onnx` into `out`. `memory_budget` bytes is the stage's
/// one memory setting: train and validation embeddings are loaded while
/// they fit in it together (train first), the test split while it fits
/// alone; any other split is streamed from the cache one batch at a time.
/// Results do not depend on it.
pub fn train(features_dir: &Path, out: &Path, config: &HeadConfig, memory_budget: usize) -> Result<()> {
    let info = feature_cache::read_features(features_dir)?;
    let (dataset, store) = feature_cache::open_features(&info)?;
    // One scan of the cache for the model check and the test split.
    let index = store.scan()?;
    eprintln!("{}", info.model.weights_note);
    let classes = info.dataset.classes.clone();
    let dim = info.embedding_len;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut log = MetricsLog::create(&out.join("metrics.jsonl"))?;
    let mut on_epoch = |record: &train_kit::EpochRecord| {
        eprintln!("{}", record.summary_line());
        if let Err(e) = log.append(record) {
            eprintln!("warning: could not append to metrics.jsonl: {e}");
        }
    };
    let started = std::time::Instant::now();
    let head = fit(&dataset, &store, dim, config, &classes, memory_budget, &mut on_epoch)?;
    let seconds = started.elapsed().as_secs_f64();
    io::save(out, &head)?;
    onnx_graph::write_model(&head::onnx_export::to_onnx(&head), out.join("head.onnx"))?;
    let checked = export::export_model(&info, &dataset, &store, &index, &head, out)?;
    eprintln!(
        "{}: conv base + head, image in, probabilities out; matches the head on {} stored images in ONNX Runtime \
         (max |diff| {:.1e})",
        checked.path.display(),
        checked.images,
        checked.max_diff
    );
    if dataset.rows(Split::Test) > 0 {
        let mut test = SplitRows::open(&dataset, &store, &index, Split::Test, dim, memory_budget)?;
        let report = head.evaluate_source(&mut test, &[1, 3]).map_err(|e| anyhow!("test split: {e}"))?;
        io::write_report(&out.join("evaluation-test.json"), &report)?;
        println!("test split, {} images\n{report}", test.len());
    }
    println!(
        "trained {} epochs in {seconds:.1} s; head in {} (head.safetensors, head.json, head.onnx, model.onnx, metrics.jsonl)",
        head.meta.history.len(),
        out.display()
    );
    Ok(())
}

/// Trains a head on the train split of `dataset`'s vectors in `store`
/// (`dim` values each), with the validation split for early stopping when
/// it has rows. Train embeddings are loaded when they fit `memory_budget`
/// bytes, validation ones when they fit what train left; otherwise they
/// are streamed. The result does not depend on the budget.
pub fn fit(
    dataset: &Dataset,
    store: &Store,
    dim: usize,
    config: &HeadConfig,
    classes: &[String],
    memory_budget: usize,
    on_epoch: &mut dyn FnMut(&train_kit::EpochRecord),
) -> Result<TrainedHead> {
    let index = store.scan()?;
    let mut train = SplitRows::open(dataset, store, &index, Split::Train, dim, memory_budget)?;
    let left = memory_budget.saturating_sub(train.resident_bytes());
    let mut validation = (dataset.rows(Split::Validation) > 0)
        .then(|| SplitRows::open(dataset, store, &index, Split::Validation, dim, left))
        .transpose()?;
    let val = validation.as_mut().map(|v| v as &mut dyn BatchSource<f32>);
    Ok(head::train_head(config, classes, &mut train, val, on_epoch)?)
}

/// One split's rows for the head: its embeddings loaded when they fit in
/// the memory budget, else read from the feature cache batch by batch.
/// Either way the same rows in the same order (the dataset's, less the
/// rows whose vectors were rejected), so results are identical.
struct SplitRows<'s> {
    store: &'s Store,
    index: &'s feature_cache::Index,
    records: Vec<dataset::Record>,
    ids: Vec<String>,
    labels: Vec<usize>,
    dim: usize,
    /// The split's embeddings when loaded (`rows × dim`).
    loaded: Option<Array2<f32>>,
}

impl<'s> SplitRows<'s> {
    fn open(
        dataset: &Dataset,
        store: &'s Store,
        index: &'s feature_cache::Index,
        split: Split,
        dim: usize,
        memory_budget: usize,
    ) -> Result<Self> {
        let records = feature_cache::usable_records(dataset, index, split)?;
        let ids: Vec<String> = records.iter().map(|r| r.content_id.clone()).collect();
        let labels = records.iter().map(|r| r.label_index as usize).collect();
        let bytes = ids.len().saturating_mul(dim).saturating_mul(4);
        let loaded = if bytes <= memory_budget {
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            Some(store.read(index, &refs)?)
        } else {
            eprintln!(
                "{split} embeddings take {} MB, over the memory budget: streaming them from the cache",
                bytes.div_ceil(1 << 20)
            );
            let missing = ids.iter().filter(|id| !index.contains(id)).count();
            if missing > 0 {
                return Err(feature_cache::CacheError::Missing {
                    store: store.dir().to_path_buf(),
                    missing,
                    wanted: ids.len(),
                    quarantined: index.quarantined().iter().map(|q| q.to_string()).collect(),
                }
                .into());
            }
            None
        };
        Ok(SplitRows { store, index, records, ids, labels, dim, loaded })
    }

    /// Bytes of embeddings held in memory (0 when streamed).
    fn resident_bytes(&self) -> usize {
        self.loaded.as_ref().map_or(0, |x| x.len() * 4)
    }

    /// The dataset records of the rows, in row order (taken once).
    fn take_records(&mut self) -> Vec<dataset::Record> {
        std::mem::take(&mut self.records)
    }
}

impl BatchSource<f32> for SplitRows<'_> {
    fn len(&self) -> usize {
        self.ids.len()
    }
    fn dim(&self) -> usize {
        self.dim
    }
    fn labels(&self) -> &[usize] {
        &self.labels
    }
    fn fill(&mut self, indices: &[usize], mut out: ArrayViewMut2<f32>) -> Result<(), head::train::SourceError> {
        match &self.loaded {
            Some(features) => {
                for (mut row, &i) in out.rows_mut().into_iter().zip(indices) {
                    row.assign(&features.row(i));
                }
            }
            None => {
                let ids: Vec<&str> = indices.iter().map(|&i| self.ids[i].as_str()).collect();
                out.assign(&self.store.read(self.index, &ids)?);
            }
        }
        Ok(())
    }
}

/// Predictions as CSV, a batch of rows at a time.
struct PredictionWriter<'w> {
    csv: csv::Writer<&'w mut dyn std::io::Write>,
    classes: &'w [String],
    k: usize,
}

impl<'w> PredictionWriter<'w> {
    fn new(w: &'w mut dyn std::io::Write, classes: &'w [String], top_k: usize) -> Result<Self> {
        let k = top_k.clamp(1, classes.len().max(1));
        // The csv writer quotes any field that needs it: paths and class
        // labels are free text.
        let mut csv = csv::Writer::from_writer(w);
        let header: Vec<String> = (1..=k).flat_map(|i| [format!("top{i}"), format!("p{i}")]).collect();
        csv.write_record(["content_id", "path", "label"].into_iter().map(str::to_owned).chain(header))?;
        Ok(PredictionWriter { csv, classes, k })
    }

    fn write(&mut self, records: &[dataset::Record], probs: ArrayView2<f32>) -> Result<()> {
        let classes = self.classes;
        for (record, row) in records.iter().zip(probs.rows()) {
            let mut order: Vec<usize> = (0..classes.len()).collect();
            order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            let cells =
                order[..self.k.min(order.len())].iter().flat_map(|&c| [classes[c].clone(), format!("{:.6}", row[c])]);
            self.csv.write_record(
                [record.content_id.clone(), record.path.clone(), record.label.clone()].into_iter().chain(cells),
            )?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        self.csv.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_paths_with_separators_quotes_and_newlines_round_trip() {
        let hostile = "a|b,\"c\"<x>\n*y*";
        let classes = vec![hostile.to_owned(), "plain".to_owned()];
        let record = dataset::Record {
            content_id: "id1".into(),
            path: "dir, with \"quotes\"/img.png".into(),
            label: hostile.into(),
            label_index: 0,
            split: Split::Test,
            width: 1,
            height: 1,
            stored_width: 1,
            stored_height: 1,
            pixels: vec![0; 3],
        };
        let probs = Array2::from_shape_vec((1, 2), vec![0.75, 0.25]).unwrap();
        let mut csv = Vec::new();
        let mut out = PredictionWriter::new(&mut csv, &classes, 2).unwrap();
        out.write(std::slice::from_ref(&record), probs.view()).unwrap();
        out.finish().unwrap();

        let mut reader = csv::Reader::from_reader(csv.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header, ["content_id", "path", "label", "top1", "p1", "top2", "p2"]);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1, "the newline in the label did not start a row");
        let row: Vec<&str> = rows[0].iter().collect();
        assert_eq!(row, ["id1", record.path.as_str(), hostile, hostile, "0.750000", "plain", "0.250000"]);
    }
}
