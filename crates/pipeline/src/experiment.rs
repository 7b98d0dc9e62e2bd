//! Experiment specs (`data-specs/experiments/*.toml`): what data, which
//! backbone, and each stage's settings. Pure: parsing, `--set` overrides and
//! validation; no I/O.
//!
//! Relative paths in a spec are relative to the directory the pipeline runs
//! in (the workspace root under `cargo xtask pipeline`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Experiment {
    /// Names the run folder: `runs/<name>-<timestamp>/`.
    pub name: String,
    pub data: Data,
    pub model: Model,
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub head: Head,
    #[serde(default)]
    pub finetune: Finetune,
}

/// Where the images come from: exactly one of `demo`, `root`, `spec`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// The built-in procedural demo set, generated on first use.
    #[serde(default)]
    pub demo: Option<Demo>,
    /// An image folder, one sub-folder per class.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// A dataset spec (`data-specs/datasets/*.toml`).
    #[serde(default)]
    pub spec: Option<PathBuf>,
    /// Stored image size (shorter side); overrides the dataset spec's.
    #[serde(default)]
    pub shorter_side: Option<u32>,
    /// Split seed; overrides the dataset spec's.
    #[serde(default)]
    pub seed: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Demo {
    pub per_class: usize,
    pub width: u32,
    pub height: u32,
    pub seed: u64,
    /// Also write broken files (to see ingestion report and skip them).
    #[serde(default)]
    pub broken_files: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// A model spec (`data-specs/models/*.toml`).
    pub spec: PathBuf,
    /// Used, said plainly, when `spec`'s weights cannot be obtained.
    #[serde(default)]
    pub fallback: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Features {
    pub batch: usize,
    /// `f32` or `f16` storage in the feature cache.
    pub dtype: String,
}

impl Default for Features {
    fn default() -> Self {
        Features { batch: 16, dtype: "f32".into() }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Head {
    pub epochs: usize,
    pub batch_size: usize,
    pub hidden: Vec<usize>,
    pub seed: u64,
}

impl Default for Head {
    fn default() -> Self {
        Head { epochs: 30, batch_size: 32, hidden: vec![1024], seed: 0 }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Finetune {
    pub enabled: bool,
    /// `block5`, `block4,block5`, `last:N`, `names:a,b`.
    pub unfreeze: String,
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub patience: usize,
    pub augment: bool,
    /// `auto`, `full`, `inference` or `cached`.
    pub prefix: String,
    pub seed: u64,
}

impl Default for Finetune {
    fn default() -> Self {
        Finetune {
            enabled: true,
            unfreeze: "block5".into(),
            epochs: 3,
            batch_size: 16,
            learning_rate: 1e-5,
            warmup_steps: 0,
            patience: 3,
            augment: true,
            prefix: "auto".into(),
            seed: 0,
        }
    }
}

impl Experiment {
    /// Parses `text`, applies `overrides` (`section.field=value`, the value
    /// in TOML syntax, or a bare string) and validates.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Experiment, String> {
        let mut value: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
        for item in overrides {
            apply_override(&mut value, item)?;
        }
        let experiment: Experiment =
            toml::Value::Table(value).try_into().map_err(|e: toml::de::Error| e.to_string())?;
        experiment.validate()?;
        Ok(experiment)
    }

    pub fn validate(&self) -> Result<(), String> {
        let sources = [self.data.demo.is_some(), self.data.root.is_some(), self.data.spec.is_some()];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err("[data] needs exactly one of `demo`, `root` or `spec`".into());
        }
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(format!("name {:?} must be letters, digits, `-`, `_` or `.`", self.name));
        }
        if !["f32", "f16"].contains(&self.features.dtype.as_str()) {
            return Err(format!("features.dtype {:?} must be f32 or f16", self.features.dtype));
        }
        if !["auto", "full", "inference", "cached"].contains(&self.finetune.prefix.as_str()) {
            return Err(format!("finetune.prefix {:?} must be auto, full, inference or cached", self.finetune.prefix));
        }
        if self.finetune.prefix == "cached" && self.finetune.augment {
            return Err("finetune.prefix = \"cached\" needs finetune.augment = false".into());
        }
        if self.head.epochs == 0 || self.finetune.epochs == 0 {
            return Err("epochs must be at least 1".into());
        }
        Ok(())
    }

    /// The resolved spec, as TOML (saved in each run folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("experiments serialise")
    }
}

fn apply_override(table: &mut toml::Table, item: &str) -> Result<(), String> {
    let (path, raw) = item.split_once('=').ok_or_else(|| format!("override {item:?} is not `section.field=value`"))?;
    let value: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let keys: Vec<&str> = path.trim().split('.').collect();
    let (last, parents) = keys.split_last().expect("split gives at least one key");
    let mut at = table;
    for key in parents {
        at = at
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("override {item:?}: {key:?} is not a section"))?;
    }
    at.insert(last.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
        name = "t"
        [data]
        demo = { per_class = 4, width = 48, height = 40, seed = 1 }
        [model]
        spec = "data-specs/models/tiny-vgg.toml"
    "#;

    #[test]
    fn defaults_and_overrides() {
        let e = Experiment::parse(BASE, &[]).unwrap();
        assert_eq!(e.head, Head::default());
        assert!(e.finetune.enabled);
        let e = Experiment::parse(
            BASE,
            &["head.epochs=7".into(), "head.hidden=[8, 4]".into(), "finetune.unfreeze=last:2".into()],
        )
        .unwrap();
        assert_eq!((e.head.epochs, e.head.hidden.clone()), (7, vec![8, 4]));
        assert_eq!(e.finetune.unfreeze, "last:2");
        // The resolved TOML parses back to the same experiment.
        assert_eq!(Experiment::parse(&e.to_toml(), &[]).unwrap(), e);
    }

    #[test]
    fn mistakes_are_named() {
        let err = Experiment::parse(BASE, &["head.epoch=7".into()]).unwrap_err();
        assert!(err.contains("epoch"), "{err}");
        let err = Experiment::parse(BASE, &["data.root=\"/x\"".into()]).unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
        let err = Experiment::parse(BASE, &["finetune.prefix=cached".into()]).unwrap_err();
        assert!(err.contains("augment"), "{err}");
        assert!(Experiment::parse(BASE, &["nonsense".into()]).unwrap_err().contains("section.field=value"));
    }
}
