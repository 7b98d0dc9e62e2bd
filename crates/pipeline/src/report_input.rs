//! The report's input, read from a run folder's files: `dataset/`
//! (dataset.json, rejects.csv), `features/features.json`, `head/`
//! (metrics.jsonl, evaluation-test.json), `finetune/` (finetune.json,
//! run/metrics.jsonl, evaluation-test.json) and the run record.

use std::path::Path;

use anyhow::{Context, Result};
use report::{CurvePoint, DatasetSummary, ModelSummary, RejectRow, ReportInput, SplitSummary, StageTiming};
use serde_json::Value;

use crate::{Experiment, RunRecord};

pub fn build(run_dir: &Path, record: &RunRecord, experiment: &Experiment, model_spec: &Path) -> Result<ReportInput> {
    let dataset = read_json(&run_dir.join("dataset/dataset.json"))?;
    let features = read_json(&run_dir.join("features/features.json"))?;
    let spec_text = std::fs::read_to_string(model_spec)?;
    let spec = spec::ModelSpec::from_toml(&spec_text)?;
    let classes: Vec<String> = serde_json::from_value(dataset["classes"].clone())?;
    let split = |name: &str| SplitSummary {
        rows: dataset["splits"][name]["rows"].as_u64().unwrap_or(0),
        per_class: serde_json::from_value(dataset["splits"][name]["per_class"].clone()).unwrap_or_default(),
    };
    let mut notes: Vec<String> = record.model_note.iter().cloned().collect();
    let pretrained = features["model"]["pretrained"].as_bool().unwrap_or(false);
    if !pretrained {
        notes.push(
            "The conv base's weights are RANDOM (generated), not pretrained: the accuracies say nothing about \
             transfer learning."
                .into(),
        );
    }
    let finetune_dir = run_dir.join("finetune");
    let finetune_ran = finetune_dir.join("finetune.json").exists();
    if !experiment.finetune.enabled {
        notes.push("Fine-tuning is disabled in this experiment (finetune.enabled = false).".into());
    }
    // The report adds the total row itself.
    let stages: Vec<StageTiming> = record
        .stages
        .iter()
        .map(|s| StageTiming { name: s.name.clone(), status: s.status, seconds: s.seconds, note: s.note.clone() })
        .collect();
    Ok(ReportInput {
        title: run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        created: record.started_at.clone(),
        experiment: experiment.to_toml(),
        dataset: DatasetSummary {
            name: dataset["name"].as_str().unwrap_or("dataset").to_owned(),
            classes,
            train: split("train"),
            validation: split("validation"),
            test: split("test"),
            rejects: rejects(&run_dir.join("dataset/rejects.csv"))?,
        },
        model: ModelSummary {
            name: spec.name.clone(),
            pretrained,
            weights_note: features["model"]["weights_note"].as_str().unwrap_or_default().to_owned(),
            input_size: spec.input.size,
            embedding_len: features["embedding_len"].as_u64().unwrap_or(0) as usize,
        },
        stages,
        head_curve: curve(&run_dir.join("head/metrics.jsonl"))?,
        finetune_curve: if finetune_ran { curve(&finetune_dir.join("run/metrics.jsonl"))? } else { Vec::new() },
        head_test: evaluation(&run_dir.join("head/evaluation-test.json"))?,
        finetune_test: if finetune_ran { evaluation(&finetune_dir.join("evaluation-test.json"))? } else { None },
        notes,
    })
}

/// A short note on what a completed stage did, from its output files.
pub fn stage_note(stage: &str, dir: &Path) -> Option<String> {
    match stage {
        "ingest" => {
            let d = read_json(&dir.join("dataset.json")).ok()?;
            let rows: u64 =
                ["train", "validation", "test"].iter().filter_map(|s| d["splits"][s]["rows"].as_u64()).sum();
            let rejected = rejects(&dir.join("rejects.csv")).map(|r| r.len()).unwrap_or(0);
            Some(format!("{rows} images, {rejected} rejected or excluded"))
        }
        "features" => {
            let f = read_json(&dir.join("features.json")).ok()?;
            Some(format!("{} cache hits, {} computed", f["hits"], f["computed"]))
        }
        "head" => {
            let e = read_json(&dir.join("evaluation-test.json")).ok()?;
            Some(format!("test accuracy {:.4}", e["accuracy"].as_f64()?))
        }
        "finetune" => {
            let f = read_json(&dir.join("finetune.json")).ok()?;
            let mut note = format!("{} epochs, prefix mode {}", f["completed_epochs"], f["prefix_mode"].as_str()?);
            if let Some(hits) = f["prefix_cache"]["hits"].as_u64() {
                note += &format!(", prefix cache {hits} hits / {} computed", f["prefix_cache"]["computed"]);
            }
            if let Some(a) = f["test_accuracy"].as_f64() {
                note += &format!(", test accuracy {a:.4}");
            }
            Some(note)
        }
        _ => None,
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

fn rejects(path: &Path) -> Result<Vec<RejectRow>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut reader = csv::Reader::from_path(path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for row in reader.records() {
        let row = row.with_context(|| format!("reading {}", path.display()))?;
        rows.push(RejectRow {
            path: row.get(0).unwrap_or_default().to_owned(),
            reason: row.get(2).unwrap_or_default().to_owned(),
        });
    }
    Ok(rows)
}

/// Learning curves from a metrics log: the head's (`train_loss`,
/// `train_accuracy`, `val_loss`, `val_accuracy`) and fine-tuning's share
/// these names.
fn curve(path: &Path) -> Result<Vec<CurvePoint>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let v: Value = serde_json::from_str(line).with_context(|| format!("parsing {}", path.display()))?;
            Ok(CurvePoint {
                epoch: v["epoch"].as_u64().unwrap_or(0) as usize,
                train_loss: v["train_loss"].as_f64().unwrap_or(f64::NAN),
                val_loss: v["val_loss"].as_f64(),
                train_accuracy: v["train_accuracy"].as_f64().unwrap_or(f64::NAN),
                val_accuracy: v["val_accuracy"].as_f64(),
            })
        })
        .collect()
}

fn evaluation(path: &Path) -> Result<Option<train_kit::Evaluation>> {
    if !path.exists() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_value(read_json(path)?)?))
}
