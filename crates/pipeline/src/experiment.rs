//! Experiment specs (`data-specs/experiments/*.toml`): what data, which
//! backbone, and each stage's settings. Pure: parsing, `--set` overrides and
//! validation; no I/O.
//!
//! The `[head]` table is [`HeadConfig`] and `[finetune]` is
//! [`FinetuneConfig`] plus `enabled`: the stages' own settings types, the one
//! source of their defaults, so every setting a stage has can be set here
//! (and with `--set`).
//!
//! Relative paths in a spec are relative to the directory the pipeline runs
//! in (the workspace root under `cargo xtask pipeline`).

use std::path::PathBuf;

use contracts::finetune::FinetuneConfig;
use contracts::head::{ClassWeights, HeadConfig};
use serde::{Deserialize, Deserializer, Serialize};
use spec::SpecError;

/// The procedural demo images' settings (`[data] demo = {...}`).
pub use ingest::source::DemoImages as Demo;

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
    pub head: HeadConfig,
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

/// `[finetune]`: whether the stage runs, and its settings (every
/// [`FinetuneConfig`] field, in the same table).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Finetune {
    pub enabled: bool,
    #[serde(flatten)]
    pub settings: FinetuneConfig,
}

impl Default for Finetune {
    fn default() -> Self {
        Finetune { enabled: true, settings: FinetuneConfig::default() }
    }
}

/// By hand rather than `#[serde(flatten)]`: a flattened struct ignores
/// unknown keys (`deny_unknown_fields` does not reach through `flatten`),
/// so a misspelt setting would be dropped silently. Here `enabled` is taken
/// out and the rest must be a [`FinetuneConfig`], which names any key it
/// does not know.
impl<'de> Deserialize<'de> for Finetune {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // The inner errors name their key below this table; the outer error adds this table.
        let inner = |e: toml::de::Error| D::Error::custom(e.to_string().trim_end().replace("\nin ", " in "));
        let mut table = toml::Table::deserialize(deserializer)?;
        let enabled = match table.remove("enabled") {
            Some(value) => bool::deserialize(value)
                .map_err(|e| D::Error::custom(format!("enabled: {}", e.to_string().trim_end())))?,
            None => Finetune::default().enabled,
        };
        let settings = FinetuneConfig::deserialize(toml::Value::Table(table)).map_err(inner)?;
        Ok(Finetune { enabled, settings })
    }
}

/// The optional sections with their defaults: where `--set` looks up what
/// a table it creates starts from. Field names as in [`Experiment`].
#[derive(Default, Serialize)]
struct SectionDefaults {
    features: Features,
    head: HeadConfig,
    finetune: Finetune,
}

/// The key that selects a settings enum's variant (`optimizer`, `schedule`).
const VARIANT_TAG: &str = "kind";

impl Experiment {
    /// Parses `text`, applies `overrides` (`section.field=value` or
    /// `section.table.field=value`, the value in TOML syntax or a bare
    /// string) and validates.
    pub fn parse(text: &str, overrides: &[String]) -> Result<Experiment, SpecError> {
        let mut table: toml::Table = spec::parse_toml(text)?;
        let defaults = section_defaults();
        for item in overrides {
            apply_override(&mut table, &defaults, item).map_err(SpecError::Invalid)?;
        }
        let experiment: Experiment = match toml::Value::Table(table).try_into() {
            Ok(experiment) => experiment,
            // The table no longer knows where its values were written: when
            // the file alone has the mistake, parsing it again says where.
            Err(e) => {
                return Err(match spec::parse_toml::<Experiment>(text) {
                    Err(located @ SpecError::Toml { at: Some(_), .. }) => located,
                    _ => SpecError::Toml { at: None, message: e.to_string().trim_end().replace("\nin ", " in ") },
                })
            }
        };
        experiment.validate().map_err(SpecError::Invalid)?;
        Ok(experiment)
    }

    pub fn validate(&self) -> Result<(), String> {
        let sources = [self.data.demo.is_some(), self.data.root.is_some(), self.data.spec.is_some()];
        if sources.iter().filter(|&&s| s).count() != 1 {
            return Err("[data] needs exactly one of `demo`, `root` or `spec`".into());
        }
        // The name becomes the run folder's name.
        spec::names::check_name("name", &self.name)?;
        if !["f32", "f16"].contains(&self.features.dtype.as_str()) {
            return Err(format!("features.dtype {:?} must be f32 or f16", self.features.dtype));
        }
        validate_head(&self.head).map_err(|e| format!("[head] {e}"))?;
        self.finetune.settings.validate().map_err(|e| format!("[finetune] {e}"))
    }

    /// The resolved spec, as TOML (saved in each run folder).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("experiments serialise")
    }
}

/// What can be checked before the class count is known: everything but
/// the length of explicit class weights (checked as if there were one class
/// per weight; the head stage checks it against the dataset).
fn validate_head(head: &HeadConfig) -> Result<(), contracts::head::ConfigError> {
    let classes = match &head.class_weights {
        ClassWeights::Explicit(weights) => weights.len().max(2),
        ClassWeights::None | ClassWeights::Balanced => 2,
    };
    head.validate(classes)
}

fn section_defaults() -> toml::Table {
    toml::Table::try_from(SectionDefaults::default()).expect("default settings serialise")
}

/// Writes one override into the experiment's TOML table. Tables on the way
/// are created if missing; one created where the settings have a tagged
/// enum (`head.optimizer`, `head.schedule`) starts with the default's
/// `kind`, so `--set head.optimizer.lr=3e-4` tunes the default optimizer
/// (set `...optimizer.kind` to change it).
fn apply_override(table: &mut toml::Table, defaults: &toml::Table, item: &str) -> Result<(), String> {
    let (path, raw) = item.split_once('=').ok_or_else(|| format!("override {item:?} is not `section.field=value`"))?;
    let keys: Vec<&str> = path.trim().split('.').map(str::trim).collect();
    if keys.iter().any(|k| k.is_empty()) {
        return Err(format!("override {item:?}: empty key in {path:?}"));
    }
    let (last, parents) = keys.split_last().expect("split gives at least one key");
    let mut at = table;
    let mut default_at = Some(defaults);
    for key in parents {
        let default_here = default_at.and_then(|d| d.get(*key)).and_then(toml::Value::as_table);
        at = at
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(new_table(default_here)))
            .as_table_mut()
            .ok_or_else(|| format!("override {item:?}: {key:?} is not a table"))?;
        default_at = default_here;
    }
    at.insert(last.to_string(), override_value(raw));
    Ok(())
}

/// A table an override creates: empty, or the default's variant tag.
fn new_table(default: Option<&toml::Table>) -> toml::Table {
    let tag = default.and_then(|d| d.get(VARIANT_TAG));
    tag.map(|kind| toml::Table::from_iter([(VARIANT_TAG.to_owned(), kind.clone())])).unwrap_or_default()
}

/// `raw` as a TOML value, or as a string when it is not one (`sgd`,
/// `last:2`, `block4,block5`).
fn override_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::finetune::{Optimizer, PrefixMode};
    use contracts::head::{AdamConfig, OptimizerConfig, SgdConfig};

    const BASE: &str = r#"
        name = "t"
        [data]
        demo = { per_class = 4, width = 48, height = 40, seed = 1 }
        [model]
        spec = "data-specs/models/tiny-vgg.toml"
    "#;

    fn parse(overrides: &[&str]) -> Result<Experiment, String> {
        Experiment::parse(BASE, &overrides.iter().map(|s| s.to_string()).collect::<Vec<_>>()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_are_the_stages_own() {
        let e = parse(&[]).unwrap();
        assert_eq!(e.head, HeadConfig::default());
        assert_eq!(e.finetune, Finetune::default());
        assert!(e.finetune.enabled);
        assert_eq!(e.finetune.settings, FinetuneConfig::default());
    }

    #[test]
    fn overrides_reach_every_setting() {
        let e = parse(&[
            "head.epochs=7",
            "head.hidden=[8, 4]",
            "head.dropout=0.2",
            "head.optimizer.lr=3e-4",
            "head.schedule.kind=cosine",
            "head.schedule.warmup_epochs=1",
            "head.early_stopping.patience=5",
            "head.class_weights=balanced",
            "head.label_smoothing=0.1",
            "finetune.unfreeze=last:2",
            "finetune.optimizer=sgd",
            "finetune.prefix=full",
            "finetune.warmup_steps=20",
        ])
        .unwrap();
        assert_eq!((e.head.epochs, e.head.hidden.clone(), e.head.dropout), (7, vec![8, 4], 0.2));
        assert_eq!(e.head.optimizer, OptimizerConfig::Adam(AdamConfig { lr: 3e-4, ..Default::default() }));
        assert_eq!(e.head.schedule, train_kit::Schedule::Cosine { warmup_epochs: 1.0, final_lr_ratio: 0.0 });
        assert_eq!(e.head.early_stopping.patience, 5);
        assert_eq!(e.head.class_weights, ClassWeights::Balanced);
        assert_eq!(e.head.label_smoothing, 0.1);
        assert_eq!(e.finetune.settings.unfreeze, "last:2");
        assert_eq!(e.finetune.settings.optimizer, Optimizer::Sgd);
        assert_eq!(e.finetune.settings.prefix, PrefixMode::Full);
        assert_eq!(e.finetune.settings.warmup_steps, 20);
        // The resolved TOML parses back to the same experiment.
        assert_eq!(Experiment::parse(&e.to_toml(), &[]).unwrap(), e);

        // Another optimizer: its own defaults, then its own fields, in either order.
        for overrides in [
            ["head.optimizer.kind=sgd", "head.optimizer.momentum=0.9"],
            ["head.optimizer.momentum=0.9", "head.optimizer.kind=sgd"],
        ] {
            let e = parse(&overrides).unwrap();
            assert_eq!(e.head.optimizer, OptimizerConfig::Sgd(SgdConfig { momentum: 0.9, ..Default::default() }));
        }
        let e = parse(&["head.optimizer={kind = \"adamw\", lr = 0.01}"]).unwrap();
        assert_eq!(e.head.optimizer.lr(), 0.01);
        assert!(!parse(&["finetune.enabled=false"]).unwrap().finetune.enabled);
    }

    /// Every leaf of the stages' default settings, as a dotted path and a
    /// changed value (numbers moved, booleans flipped; strings and arrays kept).
    fn leaves(prefix: &str, table: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (key, value) in table {
            let path = format!("{prefix}.{key}");
            match value {
                toml::Value::Table(inner) => leaves(&path, inner, out),
                toml::Value::Integer(i) => out.push((path, toml::Value::Integer(i + 1))),
                toml::Value::Float(f) => out.push((path, toml::Value::Float(f * 0.5 + 0.01))),
                toml::Value::Boolean(b) => out.push((path, toml::Value::Boolean(!b))),
                other => out.push((path, other.clone())),
            }
        }
    }

    fn at<'a>(table: &'a toml::Table, dotted: &str) -> Option<&'a toml::Value> {
        let mut keys = dotted.split('.');
        let mut value = table.get(keys.next()?)?;
        for key in keys {
            value = value.as_table()?.get(key)?;
        }
        Some(value)
    }

    #[test]
    fn every_stage_setting_is_reachable_with_set() {
        let mut settings = Vec::new();
        leaves("head", &toml::Table::try_from(HeadConfig::default()).unwrap(), &mut settings);
        leaves("finetune", &toml::Table::try_from(FinetuneConfig::default()).unwrap(), &mut settings);
        assert!(settings.len() > 30, "{} settings", settings.len());
        for (path, value) in settings {
            if path.ends_with(&format!(".{VARIANT_TAG}")) {
                continue; // the variant tags have their own tests above
            }
            let item = format!("{path}={value}");
            let e = parse(&[&item]).unwrap_or_else(|err| panic!("--set {item}: {err}"));
            let resolved: toml::Table = toml::from_str(&e.to_toml()).unwrap();
            assert_eq!(at(&resolved, &path), Some(&value), "--set {item} did not land");
        }
    }

    #[test]
    fn the_tables_of_a_file_are_the_stages_settings() {
        let text = format!(
            "{BASE}\n[head]\noptimizer = {{ kind = \"sgd\", lr = 0.05 }}\nseed = 3\n\
             [finetune]\nenabled = false\nepochs = 4\noptimizer = \"sgd\"\n"
        );
        let e =
            Experiment::parse(&text, &["head.optimizer.nesterov=true".into(), "head.optimizer.momentum=0.5".into()])
                .unwrap();
        let sgd = SgdConfig { lr: 0.05, momentum: 0.5, nesterov: true, ..Default::default() };
        assert_eq!((e.head.optimizer.clone(), e.head.seed), (OptimizerConfig::Sgd(sgd), 3));
        assert_eq!((e.finetune.enabled, e.finetune.settings.epochs), (false, 4));
        assert_eq!(e.finetune.settings.optimizer, Optimizer::Sgd);
    }

    #[test]
    fn every_experiment_in_data_specs_parses() {
        let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data-specs/experiments");
        let mut parsed = 0;
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let e = Experiment::parse(&text, &[]).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
                assert_eq!(Experiment::parse(&e.to_toml(), &[]).unwrap(), e, "{}", path.display());
                parsed += 1;
            }
        }
        assert!(parsed >= 4, "{parsed} experiments in {}", folder.display());
    }

    #[test]
    fn mistakes_are_named() {
        let err = parse(&["head.epoch=7"]).unwrap_err();
        assert!(err.contains("epoch"), "{err}");
        let err = parse(&["head.optimizer.learning_rate=1"]).unwrap_err();
        assert!(err.contains("learning_rate"), "{err}");
        let err = parse(&["finetune.epoch=7"]).unwrap_err();
        assert!(err.contains("epoch"), "unknown fine-tune keys are not dropped: {err}");
        let err = parse(&["finetune.optimizer=adam"]).unwrap_err();
        assert!(err.contains("adam"), "{err}");
        let err = parse(&["finetune.enabled=\"no\""]).unwrap_err();
        assert!(err.contains("enabled"), "{err}");
        let err = parse(&["data.root=\"/x\""]).unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
        let err = parse(&["finetune.prefix=cached"]).unwrap_err();
        assert!(err.contains("augment") && err.contains("[finetune]"), "{err}");
        let err = parse(&["head.dropout=1.5"]).unwrap_err();
        assert!(err.contains("dropout") && err.contains("[head]"), "{err}");
        let err = parse(&["head.epochs=0"]).unwrap_err();
        assert!(err.contains("epochs"), "{err}");
        let err = parse(&["head.class_weights=[1.0, -1.0, 2.0]"]).unwrap_err();
        assert!(err.contains("class_weights"), "{err}");
        assert!(parse(&["head.class_weights=[1.0, 1.0, 2.0]"]).is_ok(), "the count is the head stage's to check");
        for name in ["../../x", ".hidden", "a/b"] {
            let err = parse(&[&format!("name={name:?}")]).unwrap_err();
            assert!(err.contains("not a safe name"), "{name}: {err}");
        }
        let err = parse(&["head.epochs.x=1"]).unwrap_err();
        assert!(err.contains("head.epochs"), "{err}");
        let err = parse(&["head.epochs=1", "head.epochs.x=1"]).unwrap_err();
        assert!(err.contains("not a table"), "{err}");
        assert!(parse(&["nonsense"]).unwrap_err().contains("section.field=value"));
        assert!(parse(&["head..epochs=1"]).unwrap_err().contains("empty key"));
    }

    #[test]
    fn a_mistake_in_the_file_says_its_line_and_column_once() {
        let at = |text: &str| match Experiment::parse(text, &[]).unwrap_err() {
            SpecError::Toml { at, message } => (at, message),
            other => panic!("{other}"),
        };
        // Syntax.
        let line_of = |text: &str, what: &str| text.lines().position(|l| l.contains(what)).unwrap() + 1;
        let text = format!("{BASE}[head\n");
        let (position, message) = at(&text);
        assert_eq!(position.map(|(line, _)| line), Some(line_of(&text, "[head")), "{message}");
        // A value of the wrong type, found after the table is built: the file is parsed again to say where.
        let text = format!("{BASE}[head]\nepochs = \"ten\"\n");
        let (position, message) = at(&text);
        let line = line_of(&text, "epochs");
        assert_eq!(position, Some((line, 10)), "{message}");
        assert_eq!(message.matches("invalid type").count(), 1, "{message}");
        let shown = Experiment::parse(&text, &[]).unwrap_err().in_file("experiment", "e.toml".as_ref()).to_string();
        assert!(shown.starts_with(&format!("experiment e.toml: line {line}, column 10: invalid type")), "{shown}");
        // A mistake made by an override has no place in the file.
        let (position, message) = match Experiment::parse(BASE, &["head.epochs=\"ten\"".into()]).unwrap_err() {
            SpecError::Toml { at, message } => (at, message),
            other => panic!("{other}"),
        };
        assert_eq!(position, None);
        assert!(message.contains("invalid type"), "{message}");
    }
}
