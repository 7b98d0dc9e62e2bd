//! Fine-tuning's files and settings: `finetune.json`
//! ([`FinetuneSummary`]), the training loop's [`TrainConfig`] (also in its
//! resumable `state.json`), and [`FinetuneConfig`], the one source of the
//! stage's defaults (the `[finetune]` table of an experiment,
//! `finetune train --config`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use train_kit::Schedule;

use crate::Contract;

/// `finetune.json`, in the stage's output folder.
pub const SUMMARY_FILE: &str = "finetune.json";

/// The fine-tune stage's settings: what an experiment's `[finetune]` table
/// holds (besides `enabled`) and `finetune train --config` reads; flags
/// override single fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FinetuneConfig {
    /// What of the conv base trains: `block5`, `block4,block5`, `last:N`,
    /// `names:a,b`, `none`. The head always trains.
    pub unfreeze: String,
    pub epochs: usize,
    pub batch_size: usize,
    /// The base learning rate (1e-5 is the usual start for fine-tuning).
    pub learning_rate: f64,
    /// Steps of linear warm-up, then a cosine decay to a tenth of the rate;
    /// 0 keeps the rate constant.
    pub warmup_steps: usize,
    pub optimizer: Optimizer,
    /// Epochs without validation improvement before stopping (0: never stop early).
    pub patience: usize,
    /// Random resized crop and horizontal flip of the training images.
    pub augment: bool,
    /// How the frozen prefix runs.
    pub prefix: PrefixMode,
    /// Seeds the batch order and the augmentation draws.
    pub seed: u64,
}

impl Default for FinetuneConfig {
    fn default() -> Self {
        FinetuneConfig {
            unfreeze: "block5".into(),
            epochs: 3,
            batch_size: 16,
            learning_rate: 1e-5,
            warmup_steps: 0,
            optimizer: Optimizer::Adamw,
            patience: 3,
            augment: true,
            prefix: PrefixMode::Auto,
            seed: 0,
        }
    }
}

impl FinetuneConfig {
    /// Describes the first invalid setting, if any.
    pub fn validate(&self) -> Result<(), String> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err("finetune epochs and batch_size must be at least 1".into());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(format!("finetune learning_rate must be positive, not {}", self.learning_rate));
        }
        if self.prefix == PrefixMode::Cached && self.augment {
            return Err("finetune prefix = \"cached\" needs augment = false: augmented images change the \
                        prefix's output every epoch"
                .into());
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Optimizer {
    Adamw,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    Auto,
    Full,
    Inference,
    Cached,
}

impl std::str::FromStr for Optimizer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "adamw" => Ok(Optimizer::Adamw),
            "sgd" => Ok(Optimizer::Sgd),
            other => Err(format!("unknown optimizer '{other}' (expected adamw or sgd)")),
        }
    }
}

impl std::str::FromStr for PrefixMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(PrefixMode::Auto),
            "full" => Ok(PrefixMode::Full),
            "inference" => Ok(PrefixMode::Inference),
            "cached" => Ok(PrefixMode::Cached),
            other => Err(format!("unknown prefix mode '{other}' (expected auto, full, inference or cached)")),
        }
    }
}

/// Training settings. Part of the run's fingerprint: a run folder only
/// resumes with the same settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// The base learning rate (1e-5 is the usual start for fine-tuning).
    pub learning_rate: f64,
    #[serde(default)]
    pub schedule: Schedule,
    /// Seeds the order of the examples in each epoch.
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "yes")]
    pub shuffle: bool,
    /// Stop after this many epochs without improvement of the monitored
    /// loss (validation loss, or training loss without a validation set).
    #[serde(default)]
    pub patience: Option<usize>,
    /// The least decrease that counts as an improvement.
    #[serde(default)]
    pub min_delta: f64,
    /// What the batches are, for the caller to say (augmentation, how the
    /// frozen prefix runs): part of the run's identity, so a run folder only
    /// resumes over the same kind of data.
    #[serde(default)]
    pub source: String,
}

fn yes() -> bool {
    true
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 10,
            batch_size: 32,
            learning_rate: 1e-5,
            schedule: Schedule::Constant,
            seed: 0,
            shuffle: true,
            patience: Some(3),
            min_delta: 0.0,
            source: String::new(),
        }
    }
}

impl TrainConfig {
    /// Describes the first invalid setting, if any.
    pub fn validate(&self) -> Result<(), String> {
        let problem = if self.epochs == 0 {
            Some("epochs must be at least 1".to_owned())
        } else if self.batch_size == 0 {
            Some("batch_size must be at least 1".to_owned())
        } else if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            Some(format!("learning_rate must be positive, not {}", self.learning_rate))
        } else if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            Some(format!("min_delta must be non-negative, not {}", self.min_delta))
        } else {
            None
        };
        problem.map_or(Ok(()), Err)
    }
}

/// Why a fine-tuning run returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// All epochs ran.
    Completed,
    /// `patience` epochs passed without improvement.
    EarlyStopped,
    /// The epoch callback asked to stop; the run folder resumes from here.
    Interrupted,
}

/// What to do to each training image.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Random resized crop; `None`: the evaluation resize and centre crop.
    pub crop: Option<CropRange>,
}

/// The window a random resized crop draws from.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropRange {
    /// Fraction of the image's area, `(low, high]`.
    pub scale: (f64, f64),
    /// Width / height, drawn log-uniformly.
    pub ratio: (f64, f64),
}

impl Default for CropRange {
    /// A milder area range than torchvision's `(0.08, 1)`: fine-tuning
    /// nudges pretrained features and the datasets are small, so crops keep
    /// at least half the image.
    fn default() -> Self {
        CropRange { scale: (0.5, 1.0), ratio: (3.0 / 4.0, 4.0 / 3.0) }
    }
}

impl Default for Augment {
    fn default() -> Self {
        Augment { flip: true, crop: Some(CropRange::default()) }
    }
}

impl Augment {
    pub fn validate(&self) -> Result<(), String> {
        if let Some(CropRange { scale: (s0, s1), ratio: (r0, r1) }) = self.crop {
            if !(0.0 < s0 && s0 <= s1 && s1 <= 1.0) {
                return Err(format!("crop scale ({s0}, {s1}) must satisfy 0 < low <= high <= 1"));
            }
            if !(0.0 < r0 && r0 <= r1 && r1.is_finite()) {
                return Err(format!("crop ratio ({r0}, {r1}) must satisfy 0 < low <= high"));
            }
        }
        Ok(())
    }
}

/// What the prefix cache found and did (cached-prefix and inference modes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PrefixCacheStats {
    pub hits: usize,
    pub computed: usize,
    pub seconds: f64,
}

/// `finetune.json`: what ran, how fast, and where things are.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinetuneSummary {
    pub dataset: PathBuf,
    pub model: String,
    pub pretrained: bool,
    pub weights_note: String,
    pub head: Option<PathBuf>,
    pub unfreeze: String,
    pub trainable_parameters: Vec<String>,
    pub augment: Option<Augment>,
    pub prefix_mode: PrefixMode,
    pub split_at: Option<String>,
    pub config: TrainConfig,
    pub artifacts: PathBuf,
    pub artifacts_generated: bool,
    pub artifacts_seconds: f64,
    pub prefix_cache: Option<PrefixCacheStats>,
    pub resumed_after_epoch: usize,
    pub completed_epochs: usize,
    pub stop: StopReason,
    pub best_epoch: usize,
    pub train_seconds: f64,
    pub train_images_per_second: Option<f64>,
    pub export_seconds: f64,
    pub test_accuracy: Option<f64>,
    pub model_onnx: PathBuf,
    pub peak_rss_mb: Option<f64>,
    pub total_seconds: f64,
}

impl Contract for FinetuneSummary {
    const NAME: &'static str = "finetune.json";
    const SCHEMA_VERSION: u32 = 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_reads_a_table_and_names_its_mistakes() {
        let c: FinetuneConfig = toml::from_str("epochs = 7\nprefix = \"full\"\noptimizer = \"sgd\"").unwrap();
        assert_eq!((c.epochs, c.prefix, c.optimizer), (7, PrefixMode::Full, Optimizer::Sgd));
        assert_eq!(c.batch_size, FinetuneConfig::default().batch_size);
        assert!(toml::from_str::<FinetuneConfig>("epoch = 7").unwrap_err().to_string().contains("epoch"));
        let cached = FinetuneConfig { prefix: PrefixMode::Cached, ..Default::default() };
        assert!(cached.validate().unwrap_err().contains("augment"));
        assert!(FinetuneConfig { augment: false, ..cached }.validate().is_ok());
    }
}
