//! The head stage's work, as library calls the `head` binary makes: train
//! on the features stage's output (`features.json` and the cache it names,
//! through the `feature-cache` crate) and write the head, its metrics and
//! `model.onnx` ([`export`]); evaluate or predict a split. The head's math
//! is the `head` library, which knows no files but its own.

pub mod export;

use std::path::Path;

use anyhow::{bail, Context, Result};
use contracts::features::FEATURES_FILE;
use dataset::{Dataset, Split};
use feature_cache::{load_split, SplitFeatures, Store};
use head::io::{self, MetricsLog};
use head::{BatchSource, HeadConfig, InMemory, TrainedHead};
use ndarray::{Array2, ArrayViewMut2};

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
pub fn evaluate(head_dir: &Path, features_dir: &Path, split: Split, top_k: &[usize], out: Option<&Path>) -> Result<()> {
    let (head, dataset, store) = open(head_dir, features_dir)?;
    let data = load_split(&dataset, &store, split)?;
    let report = head.evaluate(data.features.view(), &labels(&data), top_k);
    println!("{split} split, {} images\n{report}", data.labels.len());
    if let Some(out) = out {
        io::write_report(out, &report)?;
    }
    Ok(())
}

/// The `top_k` classes with probabilities for every row of a split, as CSV
/// to `out` (standard output when `None`).
pub fn predict(head_dir: &Path, features_dir: &Path, split: Split, top_k: usize, out: Option<&Path>) -> Result<()> {
    let (head, dataset, store) = open(head_dir, features_dir)?;
    let records = dataset.index(split)?;
    let data = load_split(&dataset, &store, split)?;
    let probs = head.predict_proba(data.features.view());
    match out {
        // Whole or not at all: a killed run leaves no half-written CSV.
        Some(path) => {
            let mut csv = Vec::new();
            write_predictions(&mut csv, &records, &head.meta.class_names, &probs, top_k)?;
            atomic_file::write(path, &csv).with_context(|| format!("writing the predictions {}", path.display()))
        }
        None => write_predictions(&mut std::io::stdout().lock(), &records, &head.meta.class_names, &probs, top_k),
    }
}

fn labels(data: &SplitFeatures) -> Vec<usize> {
    data.labels.iter().map(|&l| l as usize).collect()
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
/// checked `model.onnx` into `out`. Train embeddings over `memory_budget`
/// bytes are streamed from the cache.
pub fn train(features_dir: &Path, out: &Path, config: &HeadConfig, memory_budget: usize) -> Result<()> {
    let info = feature_cache::read_features(features_dir)?;
    let (dataset, store) = feature_cache::open_features(&info)?;
    eprintln!("{}", info.model.weights_note);
    let classes = info.dataset.classes.clone();
    let bytes = dataset.rows(Split::Train) * info.embedding_len * 4;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut log = MetricsLog::create(&out.join("metrics.jsonl"))?;
    let mut on_epoch = |record: &train_kit::EpochRecord| {
        eprintln!("{}", record.summary_line());
        if let Err(e) = log.append(record) {
            eprintln!("warning: could not append to metrics.jsonl: {e}");
        }
    };
    let validation =
        (dataset.rows(Split::Validation) > 0).then(|| load_split(&dataset, &store, Split::Validation)).transpose()?;
    let val_labels = validation.as_ref().map(labels).unwrap_or_default();
    let mut val_source = validation.as_ref().map(|v| InMemory::new(v.features.view(), &val_labels));
    let val = val_source.as_mut().map(|v| v as &mut dyn BatchSource<f32>);
    let started = std::time::Instant::now();
    let head = if bytes <= memory_budget {
        let train = load_split(&dataset, &store, Split::Train)?;
        let train_labels = labels(&train);
        head::train_head(
            config,
            &classes,
            &mut InMemory::new(train.features.view(), &train_labels),
            val,
            &mut on_epoch,
        )?
    } else {
        eprintln!("train embeddings take {} MB, over the budget: streaming them from the cache", bytes >> 20);
        let mut source = CacheSource::new(&dataset, &store, info.embedding_len)?;
        head::train_head(config, &classes, &mut source, val, &mut on_epoch)?
    };
    let seconds = started.elapsed().as_secs_f64();
    io::save(out, &head)?;
    onnx_graph::write_model(&head::onnx_export::to_onnx(&head), out.join("head.onnx"))?;
    let checked = export::export_model(&info, &dataset, &store, &head, out)?;
    eprintln!(
        "{}: conv base + head, image in, probabilities out; matches the head on {} stored images in ONNX Runtime \
         (max |diff| {:.1e})",
        checked.path.display(),
        checked.images,
        checked.max_diff
    );
    if dataset.rows(Split::Test) > 0 {
        let test = load_split(&dataset, &store, Split::Test)?;
        let report = head.evaluate(test.features.view(), &labels(&test), &[1, 3]);
        io::write_report(&out.join("evaluation-test.json"), &report)?;
        println!("test split, {} images\n{report}", test.labels.len());
    }
    println!(
        "trained {} epochs in {seconds:.1} s; head in {} (head.safetensors, head.json, head.onnx, model.onnx, metrics.jsonl)",
        head.meta.history.len(),
        out.display()
    );
    Ok(())
}

/// Training rows read from the feature cache on demand, for embeddings that
/// do not fit in memory: each batch reads only its own rows.
struct CacheSource<'s> {
    store: &'s Store,
    index: feature_cache::Index,
    ids: Vec<String>,
    labels: Vec<usize>,
    dim: usize,
}

impl<'s> CacheSource<'s> {
    fn new(dataset: &Dataset, store: &'s Store, dim: usize) -> Result<Self> {
        let index = store.scan()?;
        let records = feature_cache::usable_records(dataset, &index, Split::Train)?;
        Ok(CacheSource {
            store,
            index,
            ids: records.iter().map(|r| r.content_id.clone()).collect(),
            labels: records.iter().map(|r| r.label_index as usize).collect(),
            dim,
        })
    }
}

impl BatchSource<f32> for CacheSource<'_> {
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
        let ids: Vec<&str> = indices.iter().map(|&i| self.ids[i].as_str()).collect();
        let rows: Array2<f32> = self.store.read(&self.index, &ids)?;
        out.assign(&rows);
        Ok(())
    }
}

fn write_predictions(
    w: &mut dyn std::io::Write,
    records: &[dataset::Record],
    classes: &[String],
    probs: &Array2<f32>,
    top_k: usize,
) -> Result<()> {
    let k = top_k.clamp(1, classes.len());
    // The csv writer quotes any field that needs it: paths and class
    // labels are free text.
    let mut out = csv::Writer::from_writer(w);
    let header: Vec<String> = (1..=k).flat_map(|i| [format!("top{i}"), format!("p{i}")]).collect();
    out.write_record(["content_id", "path", "label"].into_iter().map(str::to_owned).chain(header))?;
    for (record, row) in records.iter().zip(probs.rows()) {
        let mut order: Vec<usize> = (0..classes.len()).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        let cells = order[..k].iter().flat_map(|&c| [classes[c].clone(), format!("{:.6}", row[c])]);
        out.write_record(
            [record.content_id.clone(), record.path.clone(), record.label.clone()].into_iter().chain(cells),
        )?;
    }
    out.flush()?;
    Ok(())
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
        write_predictions(&mut csv, std::slice::from_ref(&record), &classes, &probs, 2).unwrap();

        let mut reader = csv::Reader::from_reader(csv.as_slice());
        let header: Vec<String> = reader.headers().unwrap().iter().map(str::to_owned).collect();
        assert_eq!(header, ["content_id", "path", "label", "top1", "p1", "top2", "p2"]);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 1, "the newline in the label did not start a row");
        let row: Vec<&str> = rows[0].iter().collect();
        assert_eq!(row, ["id1", record.path.as_str(), hostile, hostile, "0.750000", "plain", "0.250000"]);
    }
}
