//! The report's input, read from a run folder's files, each through its
//! typed contract: `dataset/` (`dataset.json`, `rejects.csv`),
//! `features/features.json`, `head/` (`metrics.jsonl`,
//! `evaluation-test.json`), `finetune/` (`finetune.json`,
//! `run/metrics.jsonl`, `evaluation-test.json`) and the run record. A file
//! that is missing or does not match its contract is an error naming it;
//! nothing is filled in with a default.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use contracts::dataset::{DatasetInfo, INFO_FILE, REJECTS_FILE};
use contracts::features::{FeaturesInfo, FEATURES_FILE};
use contracts::finetune::{FinetuneSummary, PrefixMode, SUMMARY_FILE};
use contracts::run::RunRecord;
use contracts::{EpochRecord, Evaluation, JsonLines, Split};
use report::{CurvePoint, DatasetSummary, ModelSummary, RejectRow, ReportInput, SplitSummary, StageTiming};
use serde::Deserialize;

use crate::{Experiment, Stage};

/// Test-split metrics, written by the head and fine-tune stages when the
/// dataset has a test split.
const TEST_EVALUATION: &str = "evaluation-test.json";
/// The head's learning curve.
const HEAD_METRICS: &str = "metrics.jsonl";
/// Fine-tuning's learning curve, in its resumable run folder.
const FINETUNE_METRICS: &str = "run/metrics.jsonl";

pub fn build(run_dir: &Path, record: &RunRecord, experiment: &Experiment, model_spec: &Path) -> Result<ReportInput> {
    let outputs = Outputs { run_dir };
    let dataset: DatasetInfo = contracts::read(&outputs.file(Stage::Ingest, INFO_FILE))?;
    let features: FeaturesInfo = contracts::read(&outputs.file(Stage::Features, FEATURES_FILE))?;
    let spec_text = std::fs::read_to_string(model_spec).with_context(|| format!("reading {}", model_spec.display()))?;
    let spec = spec::ModelSpec::from_toml(&spec_text).map_err(|e| e.in_file("model spec", model_spec))?;
    let tested = has_test_split(&dataset);
    let finetuned = experiment.finetune.enabled;
    Ok(ReportInput {
        title: run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        created: record.started_at.clone(),
        experiment: experiment.to_toml(),
        dataset: dataset_summary(
            &dataset,
            dataset_name(&dataset.spec, experiment.data.demo.is_some()),
            &outputs.file(Stage::Ingest, REJECTS_FILE),
        )?,
        model: ModelSummary {
            name: spec.name.clone(),
            pretrained: features.model.pretrained,
            weights_note: features.model.weights_note.clone(),
            input_size: spec.input.size,
            embedding_len: features.embedding_len,
        },
        stages: stage_timings(record),
        head_curve: curve(&outputs.file(Stage::Head, HEAD_METRICS))?,
        finetune_curve: if finetuned { curve(&outputs.file(Stage::Finetune, FINETUNE_METRICS))? } else { Vec::new() },
        head_test: test_evaluation(&outputs.file(Stage::Head, TEST_EVALUATION), tested)?,
        finetune_test: match finetuned {
            true => test_evaluation(&outputs.file(Stage::Finetune, TEST_EVALUATION), tested)?,
            false => None,
        },
        notes: notes(record, experiment, &features),
    })
}

/// A short note on what a completed stage did, from its output in the run
/// folder (and, for the trained stages, whether the dataset has a test
/// split to report on).
pub fn stage_note(run_dir: &Path, stage: Stage) -> Result<String> {
    let outputs = Outputs { run_dir };
    let tested = || Ok::<_, anyhow::Error>(has_test_split(&contracts::read(&outputs.file(Stage::Ingest, INFO_FILE))?));
    Ok(match stage {
        Stage::Ingest => {
            let info: DatasetInfo = contracts::read(&outputs.file(stage, INFO_FILE))?;
            let rejected = rejects(&outputs.file(stage, REJECTS_FILE))?.len();
            format!("{} images, {rejected} rejected or excluded", info.total_rows())
        }
        Stage::Features => {
            let info: FeaturesInfo = contracts::read(&outputs.file(stage, FEATURES_FILE))?;
            format!("{} cache hits, {} computed", info.hits, info.computed)
        }
        Stage::Head => match test_evaluation(&outputs.file(stage, TEST_EVALUATION), tested()?)? {
            Some(evaluation) => format!("test accuracy {:.4}", evaluation.accuracy),
            None => "no test split".to_owned(),
        },
        Stage::Finetune => finetune_note(&contracts::read(&outputs.file(stage, SUMMARY_FILE))?),
    })
}

/// Where the stages' outputs are linked in a run folder.
struct Outputs<'a> {
    run_dir: &'a Path,
}

impl Outputs<'_> {
    fn file(&self, stage: Stage, name: &str) -> PathBuf {
        self.run_dir.join(stage.output_dir()).join(name)
    }
}

fn has_test_split(dataset: &DatasetInfo) -> bool {
    dataset.split(Split::Test).rows > 0
}

fn dataset_summary(dataset: &DatasetInfo, name: String, rejects_csv: &Path) -> Result<DatasetSummary> {
    let split = |split: Split| {
        let info = dataset.split(split);
        SplitSummary { rows: info.rows as u64, per_class: info.per_class.iter().map(|&n| n as u64).collect() }
    };
    Ok(DatasetSummary {
        name,
        classes: dataset.classes.clone(),
        train: split(Split::Train),
        validation: split(Split::Validation),
        test: split(Split::Test),
        rejects: rejects(rejects_csv)?,
    })
}

/// The dataset's name in the report: the one its spec gives; else (an image
/// folder given as `--root`, named by default) what the images are: the
/// demo, or the folder's own name (`/data/flowers` is `flowers`; a manifest,
/// the folder holding it).
fn dataset_name(spec: &spec::DatasetSpec, demo: bool) -> String {
    if spec.name != spec::DEFAULT_DATASET_NAME {
        return spec.name.clone();
    }
    if demo {
        return "demo".to_owned();
    }
    let folder = match &spec.source {
        spec::DatasetSource::Root(root) => PathBuf::from(root),
        spec::DatasetSource::Manifest(csv) => Path::new(csv).parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    // `.` or `..` have no name of their own; the folder they stand for has.
    let named = |path: &Path| path.file_name().map(|n| n.to_string_lossy().into_owned());
    named(&folder).or_else(|| named(&std::fs::canonicalize(&folder).ok()?)).unwrap_or_else(|| spec.name.clone())
}

fn stage_timings(record: &RunRecord) -> Vec<StageTiming> {
    // The report adds the total row itself.
    record
        .stages
        .iter()
        .map(|s| StageTiming { name: s.name.clone(), status: s.status, seconds: s.seconds, note: s.note.clone() })
        .collect()
}

fn notes(record: &RunRecord, experiment: &Experiment, features: &FeaturesInfo) -> Vec<String> {
    let mut notes: Vec<String> = record.model_note.iter().cloned().collect();
    if !features.model.pretrained {
        notes.push(
            "The conv base's weights are RANDOM (generated), not pretrained: the accuracies say nothing about \
             transfer learning."
                .into(),
        );
    }
    if !experiment.finetune.enabled {
        notes.push("Fine-tuning is disabled in this experiment (finetune.enabled = false).".into());
    }
    notes
}

fn finetune_note(summary: &FinetuneSummary) -> String {
    let mut note =
        format!("{} epochs, prefix mode {}", summary.completed_epochs, prefix_mode_name(summary.prefix_mode));
    if let Some(cache) = &summary.prefix_cache {
        note += &format!(", prefix cache {} hits / {} computed", cache.hits, cache.computed);
    }
    if let Some(accuracy) = summary.test_accuracy {
        note += &format!(", test accuracy {accuracy:.4}");
    }
    note
}

fn prefix_mode_name(mode: PrefixMode) -> &'static str {
    match mode {
        PrefixMode::Auto => "auto",
        PrefixMode::Full => "full",
        PrefixMode::Inference => "inference",
        PrefixMode::Cached => "cached",
    }
}

/// One line of `rejects.csv` (`path,kind,reason`).
#[derive(Deserialize)]
struct RejectLine {
    path: String,
    #[allow(dead_code)] // read to check the file's shape; the report shows path and reason
    kind: String,
    reason: String,
}

fn rejects(path: &Path) -> Result<Vec<RejectRow>> {
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    reader
        .deserialize()
        .map(|line| {
            let line: RejectLine = line.with_context(|| format!("reading {}", path.display()))?;
            Ok(RejectRow { path: line.path, reason: line.reason })
        })
        .collect()
}

/// A learning curve from a metrics log (the head's and fine-tuning's are
/// both [`EpochRecord`]s).
fn curve(path: &Path) -> Result<Vec<CurvePoint>> {
    let records: Vec<EpochRecord> = JsonLines::read_all(path)?;
    Ok(records
        .into_iter()
        .map(|r| CurvePoint {
            epoch: r.epoch,
            train_loss: r.train_loss,
            val_loss: r.val_loss,
            train_accuracy: r.train_accuracy,
            val_accuracy: r.val_accuracy,
        })
        .collect())
}

/// The stage's test-split metrics: required when the dataset has a test
/// split, absent (and not looked for) when it has none.
fn test_evaluation(path: &Path, tested: bool) -> Result<Option<Evaluation>> {
    Ok(if tested { Some(contracts::read(path)?) } else { None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renamed_field_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = dir.path().join("metrics.jsonl");
        let head = r#"{"epoch":1,"epochs":1,"steps":1,"global_step":1,"learning_rate":0.1,"train_loss":1.0,"#;
        let tail = r#""val_loss":null,"val_accuracy":null,"monitor":1.0,"best":true,"seconds":0.1,"train_examples_per_second":9.0}"#;
        std::fs::write(&metrics, format!("{head}\"train_accuracy\":0.5,{tail}\n")).unwrap();
        let points = curve(&metrics).unwrap();
        assert_eq!((points.len(), points[0].train_accuracy, points[0].val_loss), (1, 0.5, None));
        std::fs::write(&metrics, format!("{head}\"train_acc\":0.5,{tail}\n")).unwrap();
        let err = format!("{:#}", curve(&metrics).unwrap_err());
        assert!(err.contains("metrics.jsonl") && err.contains("train_accuracy"), "{err}");

        let rejects_csv = dir.path().join("rejects.csv");
        std::fs::write(&rejects_csv, "path,kind,reason\na/x.png,corrupt,bad bytes\n").unwrap();
        let rows = rejects(&rejects_csv).unwrap();
        assert_eq!((rows[0].path.as_str(), rows[0].reason.as_str()), ("a/x.png", "bad bytes"));
        std::fs::write(&rejects_csv, "file,kind,why\na/x.png,corrupt,bad bytes\n").unwrap();
        let err = format!("{:#}", rejects(&rejects_csv).unwrap_err());
        assert!(err.contains("rejects.csv") && err.contains("path"), "{err}");
        let missing = dir.path().join("evaluation-test.json");
        assert!(test_evaluation(&missing, false).unwrap().is_none());
        assert!(format!("{:#}", test_evaluation(&missing, true).unwrap_err()).contains("evaluation-test.json"));
    }

    #[test]
    fn a_folder_dataset_is_named_after_its_folder() {
        use spec::{DatasetSource, DatasetSpec};
        let root = |path: &str| DatasetSpec::for_root(path);
        assert_eq!(dataset_name(&root("/data/flowers"), false), "flowers");
        assert_eq!(dataset_name(&root("/data/flowers/"), false), "flowers");
        assert_eq!(dataset_name(&root("images/cats-vs-dogs"), false), "cats-vs-dogs");
        let here = std::env::current_dir().unwrap();
        assert_eq!(dataset_name(&root("."), false), here.file_name().unwrap().to_string_lossy());
        let manifest = DatasetSpec { source: DatasetSource::Manifest("/data/birds/labels.csv".into()), ..root("") };
        assert_eq!(dataset_name(&manifest, false), "birds");
        // The demo's folder is named after its settings' fingerprint: it is "demo".
        assert_eq!(dataset_name(&root("runs/.store/demo-images-0123456789abcdef"), true), "demo");
        // A name the spec gives wins.
        let named = DatasetSpec { name: "flowers-2024".into(), ..root("/data/x") };
        assert_eq!(dataset_name(&named, false), "flowers-2024");
    }
}
