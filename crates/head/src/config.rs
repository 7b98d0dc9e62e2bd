//! The head's training configuration, with defaults that match the seed
//! (Flatten → Dense(1024, ReLU) → Dense(classes), Adam 1e-3, batch 32, 10
//! epochs). It deserialises from the `[head]` table of an experiment spec.

use serde::{Deserialize, Serialize};

use crate::model::{Activation, Init};
use crate::optim::OptimizerConfig;
use crate::schedule::Schedule;

/// Everything that decides how a head is built and trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HeadConfig {
    /// Widths of the hidden layers; empty gives logistic regression.
    pub hidden: Vec<usize>,
    pub activation: Activation,
    /// Dropout rate after each hidden layer, in [0, 1).
    pub dropout: f64,
    pub init: Init,
    pub optimizer: OptimizerConfig,
    pub schedule: Schedule,
    pub batch_size: usize,
    pub epochs: usize,
    /// Reshuffle the training set every epoch (by the seed).
    pub shuffle: bool,
    pub early_stopping: EarlyStopping,
    /// ε of label smoothing, in [0, 1).
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    /// Seeds initialisation, shuffling and dropout.
    pub seed: u64,
}

impl Default for HeadConfig {
    fn default() -> Self {
        HeadConfig {
            hidden: vec![1024],
            activation: Activation::Relu,
            dropout: 0.0,
            init: Init::GlorotUniform,
            optimizer: OptimizerConfig::default(),
            schedule: Schedule::Constant,
            batch_size: 32,
            epochs: 10,
            shuffle: true,
            early_stopping: EarlyStopping::default(),
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            seed: 42,
        }
    }
}

/// Which epoch metric early stopping and "best weights" follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Monitor {
    ValLoss,
    ValAccuracy,
    /// Used in place of `val_loss` when there is no validation set.
    TrainLoss,
    /// Used in place of `val_accuracy` when there is no validation set.
    TrainAccuracy,
}

impl Monitor {
    /// Whether larger values are better.
    pub fn maximise(self) -> bool {
        matches!(self, Monitor::ValAccuracy | Monitor::TrainAccuracy)
    }

    /// The training-set counterpart, for runs without validation data.
    pub fn without_validation(self) -> Monitor {
        match self {
            Monitor::ValLoss | Monitor::TrainLoss => Monitor::TrainLoss,
            Monitor::ValAccuracy | Monitor::TrainAccuracy => Monitor::TrainAccuracy,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Monitor::ValLoss => "val_loss",
            Monitor::ValAccuracy => "val_accuracy",
            Monitor::TrainLoss => "train_loss",
            Monitor::TrainAccuracy => "train_accuracy",
        }
    }
}

/// Stop when the monitored metric has not improved by more than
/// `min_delta` for `patience` epochs; restore the best epoch's weights.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EarlyStopping {
    /// When false, training runs all epochs (best weights are still
    /// restored if `restore_best`).
    pub enabled: bool,
    pub monitor: Monitor,
    pub patience: usize,
    pub min_delta: f64,
    pub restore_best: bool,
}

impl Default for EarlyStopping {
    fn default() -> Self {
        EarlyStopping { enabled: true, monitor: Monitor::ValLoss, patience: 3, min_delta: 0.0, restore_best: true }
    }
}

/// Per-class loss weights: `"none"`, `"balanced"` (inverse frequency in the
/// training labels) or a list with one weight per class.
#[derive(Clone, Debug, PartialEq, Default)]
pub enum ClassWeights {
    #[default]
    None,
    Balanced,
    Explicit(Vec<f64>),
}

impl Serialize for ClassWeights {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ClassWeights::None => s.serialize_str("none"),
            ClassWeights::Balanced => s.serialize_str("balanced"),
            ClassWeights::Explicit(w) => w.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ClassWeights {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Repr {
            Name(String),
            List(Vec<f64>),
        }
        match Repr::deserialize(d)? {
            Repr::Name(n) if n == "none" => Ok(ClassWeights::None),
            Repr::Name(n) if n == "balanced" => Ok(ClassWeights::Balanced),
            Repr::Name(n) => Err(serde::de::Error::custom(format!(
                "class_weights must be \"none\", \"balanced\" or a list of numbers, got \"{n}\""
            ))),
            Repr::List(w) => Ok(ClassWeights::Explicit(w)),
        }
    }
}

/// A configuration that cannot be trained, with the reason.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid head config: {0}")]
pub struct ConfigError(pub String);

impl HeadConfig {
    /// Checks ranges and consistency; `classes` is needed to check explicit
    /// class weights.
    pub fn validate(&self, classes: usize) -> Result<(), ConfigError> {
        let fail = |m: String| Err(ConfigError(m));
        if self.hidden.contains(&0) {
            return fail(format!("hidden layer widths must be positive, got {:?}", self.hidden));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return fail(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return fail(format!("label_smoothing must be in [0, 1), got {}", self.label_smoothing));
        }
        if self.batch_size == 0 {
            return fail("batch_size must be at least 1".into());
        }
        if self.epochs == 0 {
            return fail("epochs must be at least 1".into());
        }
        if classes < 2 {
            return fail(format!("a classifier needs at least 2 classes, got {classes}"));
        }
        if let ClassWeights::Explicit(w) = &self.class_weights {
            if w.len() != classes {
                return fail(format!("class_weights has {} entries for {classes} classes", w.len()));
            }
            if w.iter().any(|x| !(x.is_finite() && *x >= 0.0)) {
                return fail(format!("class_weights must be finite and >= 0, got {w:?}"));
            }
        }
        if self.early_stopping.min_delta.is_nan() || self.early_stopping.min_delta < 0.0 {
            return fail("early_stopping.min_delta must be >= 0".into());
        }
        self.optimizer.validate().map_err(ConfigError)?;
        self.schedule.validate().map_err(ConfigError)?;
        Ok(())
    }

    /// A stable fingerprint of the configuration (for run records).
    pub fn fingerprint(&self) -> spec::Fingerprint {
        spec::fingerprint("head-config", self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{AdamConfig, AdamWConfig};

    #[test]
    fn defaults_match_the_seed() {
        let c = HeadConfig::default();
        assert_eq!(c.hidden, vec![1024]);
        assert_eq!(c.activation, Activation::Relu);
        assert_eq!(c.dropout, 0.0);
        assert_eq!(c.optimizer, OptimizerConfig::Adam(AdamConfig { lr: 1e-3, ..Default::default() }));
        assert_eq!((c.batch_size, c.epochs), (32, 10));
        assert!(c.validate(5).is_ok());
    }

    #[test]
    fn parses_an_experiment_table_and_round_trips() {
        let text = r#"
            hidden = [512, 256]
            dropout = 0.5
            class_weights = "balanced"
            optimizer = { kind = "adamw", lr = 3e-4 }
            schedule = { kind = "cosine", warmup_epochs = 1 }
            early_stopping = { monitor = "val_accuracy", patience = 5 }
        "#;
        let c: HeadConfig = toml::from_str(text).unwrap();
        assert_eq!(c.hidden, vec![512, 256]);
        assert_eq!(c.class_weights, ClassWeights::Balanced);
        assert_eq!(c.optimizer, OptimizerConfig::AdamW(AdamWConfig { lr: 3e-4, ..Default::default() }));
        assert_eq!(c.early_stopping.monitor, Monitor::ValAccuracy);
        assert!(c.early_stopping.restore_best);
        assert_eq!(c.batch_size, 32);
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<HeadConfig>(&json).unwrap(), c);
        let explicit: HeadConfig = toml::from_str("class_weights = [1.0, 2.5]").unwrap();
        assert_eq!(explicit.class_weights, ClassWeights::Explicit(vec![1.0, 2.5]));
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<HeadConfig>("hiden = [3]").is_err());
        assert!(toml::from_str::<HeadConfig>("optimizer = { kind = \"adam\", learning_rate = 1 }").is_err());
        assert!(toml::from_str::<HeadConfig>("class_weights = \"inverse\"").is_err());
        let bad = HeadConfig { dropout: 1.0, ..Default::default() };
        assert!(bad.validate(3).is_err());
        let bad = HeadConfig { class_weights: ClassWeights::Explicit(vec![1.0]), ..Default::default() };
        assert!(bad.validate(3).is_err());
        assert!(HeadConfig::default().validate(1).is_err());
    }

    #[test]
    fn fingerprint_tracks_changes() {
        let a = HeadConfig::default();
        let b = HeadConfig { seed: 7, ..Default::default() };
        assert_eq!(a.fingerprint(), HeadConfig::default().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
