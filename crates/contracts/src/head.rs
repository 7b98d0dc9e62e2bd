//! The head's files and settings: `head.json` ([`HeadMeta`]), the weights
//! in `head.safetensors` ([`DenseWeights`], read by fine-tuning as well as
//! the head), and [`HeadConfig`], the one source of the head's defaults
//! (the `[head]` table of an experiment, `head train --config`).

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};
use train_kit::{EarlyStopping, EpochRecord, Monitor, Schedule};

use crate::{Contract, ContractError};

/// File name of the weights inside a head directory.
pub const WEIGHTS_FILE: &str = "head.safetensors";
/// File name of the metadata inside a head directory.
pub const META_FILE: &str = "head.json";

/// Value of [`HeadMeta::format`] for this layout of the files.
pub const FORMAT: &str = "head/1";
/// Value of [`HeadMeta::weight_layout`]: `dense_i.weight` is `[out, in]`.
pub const WEIGHT_LAYOUT: &str = "out_in";

/// The JSON half of a saved head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeadMeta {
    /// Always [`FORMAT`].
    pub format: String,
    /// Class names in label order (label `i` is `class_names[i]`).
    pub class_names: Vec<String>,
    /// `[input, hidden.., classes]`.
    pub layer_sizes: Vec<usize>,
    pub activation: Activation,
    /// Always [`WEIGHT_LAYOUT`].
    pub weight_layout: String,
    /// The resolved configuration (every default filled in).
    pub config: HeadConfig,
    pub config_fingerprint: String,
    /// Class weights used in the loss, after resolving "balanced".
    pub class_weights: Option<Vec<f64>>,
    pub monitor: Monitor,
    /// 1-based epoch with the best monitored value; its weights are the
    /// saved ones when `config.early_stopping.restore_best` (the default),
    /// else the last epoch's are.
    pub best_epoch: usize,
    pub stopped_early: bool,
    pub history: Vec<EpochRecord>,
    /// Provenance supplied by the caller (for example the feature cache's
    /// model and preprocessing fingerprints).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, String>,
}

impl Contract for HeadMeta {
    const NAME: &'static str = "head.json";
    const SCHEMA_VERSION: u32 = 1;
}

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

/// Non-linearity applied after every hidden layer (never after the last).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Relu,
    Tanh,
}

/// Weight initialisation; biases always start at zero (as in Keras).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Init {
    /// U(-l, l) with l = sqrt(6 / (fan_in + fan_out)): the Keras default.
    GlorotUniform,
    /// U(-l, l) with l = sqrt(6 / fan_in).
    HeUniform,
    /// Normal with std sqrt(2 / fan_in), redrawn beyond two standard
    /// deviations and rescaled as Keras's truncated `HeNormal` does.
    HeNormal,
}

fn default_lr() -> f64 {
    1e-3
}
fn default_beta1() -> f64 {
    0.9
}
fn default_beta2() -> f64 {
    0.999
}
fn default_eps() -> f64 {
    // Keras's default; PyTorch uses 1e-8.
    1e-7
}
fn default_adamw_decay() -> f64 {
    // Keras's AdamW default.
    0.004
}
fn default_sgd_lr() -> f64 {
    0.01
}

/// Which optimiser, with its hyper-parameters. In TOML:
/// `optimizer = { kind = "adam", lr = 1e-3 }`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    Sgd(SgdConfig),
    Adam(AdamConfig),
    #[serde(rename = "adamw")]
    AdamW(AdamWConfig),
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adam(AdamConfig::default())
    }
}

impl OptimizerConfig {
    /// The base learning rate (schedules scale it).
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd(c) => c.lr,
            OptimizerConfig::Adam(c) => c.lr,
            OptimizerConfig::AdamW(c) => c.lr,
        }
    }

    /// Describes the first invalid hyper-parameter, if any.
    pub fn validate(&self) -> Result<(), String> {
        let lr = self.lr();
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("optimizer.lr must be positive, got {lr}"));
        }
        let (betas, eps, decay) = match self {
            OptimizerConfig::Sgd(c) => {
                if !(0.0..1.0).contains(&c.momentum) {
                    return Err(format!("optimizer.momentum must be in [0, 1), got {}", c.momentum));
                }
                if c.nesterov && c.momentum == 0.0 {
                    return Err("optimizer.nesterov needs a non-zero momentum".into());
                }
                (None, None, c.weight_decay)
            }
            OptimizerConfig::Adam(c) => (Some((c.beta1, c.beta2)), Some(c.eps), c.weight_decay),
            OptimizerConfig::AdamW(c) => (Some((c.beta1, c.beta2)), Some(c.eps), c.weight_decay),
        };
        if let Some((b1, b2)) = betas {
            if !(0.0..1.0).contains(&b1) || !(0.0..1.0).contains(&b2) {
                return Err(format!("optimizer betas must be in [0, 1), got {b1}, {b2}"));
            }
        }
        if let Some(eps) = eps {
            if !(eps.is_finite() && eps > 0.0) {
                return Err(format!("optimizer.eps must be positive, got {eps}"));
            }
        }
        if !(decay.is_finite() && decay >= 0.0) {
            return Err(format!("optimizer.weight_decay must be >= 0, got {decay}"));
        }
        Ok(())
    }
}

/// `v = μ·v + g; w −= lr·v` (Nesterov: `w −= lr·(g + μ·v)`). Weight decay,
/// when set, is L2 added to the gradient.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SgdConfig {
    pub lr: f64,
    pub momentum: f64,
    pub nesterov: bool,
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig { lr: default_sgd_lr(), momentum: 0.0, nesterov: false, weight_decay: 0.0 }
    }
}

/// Adam. `weight_decay` here is L2 added to the gradient (coupled), as in
/// `torch.optim.Adam`; use AdamW for decoupled decay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: 0.0,
        }
    }
}

/// AdamW: Adam plus decoupled decay `w −= lr·weight_decay·w` applied before
/// the Adam step.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            lr: default_lr(),
            beta1: default_beta1(),
            beta2: default_beta2(),
            eps: default_eps(),
            weight_decay: default_adamw_decay(),
        }
    }
}

/// One dense layer's parameters as stored: `weight` is `[outputs, inputs]`
/// row-major, `bias` is `[outputs]`.
#[derive(Clone, Debug, PartialEq)]
pub struct DenseWeights {
    pub outputs: usize,
    pub inputs: usize,
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes the weights: `dense_{i}.weight` (`[out, in]`, F32) and
/// `dense_{i}.bias` (`[out]`, F32) for layer `i` from the input side. The
/// safetensors header metadata records the format, layout and activation.
pub fn write_weights(path: &Path, layers: &[DenseWeights], activation: Activation) -> Result<(), ContractError> {
    let mut owned: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        owned.push((format!("dense_{i}.weight"), vec![layer.outputs, layer.inputs], le_bytes(&layer.weight)));
        owned.push((format!("dense_{i}.bias"), vec![layer.outputs], le_bytes(&layer.bias)));
    }
    let views = owned
        .iter()
        .map(|(name, shape, data)| {
            let view =
                safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data");
            (name.clone(), view)
        })
        .collect::<Vec<_>>();
    let header: std::collections::HashMap<String, String> = [
        ("format".to_string(), FORMAT.to_string()),
        ("weight_layout".to_string(), WEIGHT_LAYOUT.to_string()),
        (
            "activation".to_string(),
            serde_json::to_value(activation).expect("serialisable").as_str().expect("a string").to_string(),
        ),
        ("layers".to_string(), layers.len().to_string()),
    ]
    .into_iter()
    .collect();
    let bytes = safetensors::serialize(views, Some(header))
        .map_err(|e| ContractError::invalid(path, format!("invalid safetensors: {e}")))?;
    Ok(atomic_file::write(path, &sorted_header(bytes))?)
}

/// The same file with its JSON header's keys sorted: `safetensors` writes
/// the metadata map in `HashMap` order, which changes from run to run, and
/// the same weights must give the same bytes. The header keeps its length
/// (same keys and values), so the data offsets stay valid.
fn sorted_header(bytes: Vec<u8>) -> Vec<u8> {
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = &bytes[8..8 + len];
    let value: serde_json::Value = serde_json::from_slice(header.trim_ascii_end()).expect("safetensors wrote JSON");
    let mut sorted = serde_json::to_vec(&value).expect("a JSON value serialises");
    sorted.resize(len, b' ');
    debug_assert_eq!(sorted.len(), len, "same keys and values, same length");
    [&bytes[..8], &sorted, &bytes[8 + len..]].concat()
}

/// Reads weights written by [`write_weights`] (or by any tool that follows
/// the same names, dtype and layout), from the input side.
pub fn read_weights(path: &Path) -> Result<Vec<DenseWeights>, ContractError> {
    let bytes = std::fs::read(path).map_err(|source| ContractError::Io { path: path.to_path_buf(), source })?;
    let tensors = SafeTensors::deserialize(&bytes)
        .map_err(|e| ContractError::invalid(path, format!("invalid safetensors: {e}")))?;
    let read = |name: &str, rank: usize| -> Result<(Vec<usize>, Vec<f32>), ContractError> {
        let t = tensors.tensor(name).map_err(|_| ContractError::invalid(path, format!("missing tensor {name}")))?;
        if t.dtype() != Dtype::F32 {
            return Err(ContractError::invalid(path, format!("{name} is {:?}, expected F32", t.dtype())));
        }
        if t.shape().len() != rank {
            return Err(ContractError::invalid(
                path,
                format!("{name} has shape {:?}, expected rank {rank}", t.shape()),
            ));
        }
        let values = t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Ok((t.shape().to_vec(), values))
    };
    let mut layers = Vec::new();
    while tensors.names().contains(&format!("dense_{}.weight", layers.len()).as_str()) {
        let i = layers.len();
        let (shape, weight) = read(&format!("dense_{i}.weight"), 2)?;
        let (bias_shape, bias) = read(&format!("dense_{i}.bias"), 1)?;
        if bias_shape[0] != shape[0] {
            return Err(ContractError::invalid(
                path,
                format!("dense_{i}.bias has {} values for {} outputs", bias_shape[0], shape[0]),
            ));
        }
        layers.push(DenseWeights { outputs: shape[0], inputs: shape[1], weight, bias });
    }
    if layers.len() * 2 != tensors.len() {
        return Err(ContractError::invalid(
            path,
            format!(
                "expected only dense_0..dense_{} weights and biases, found {:?}",
                layers.len().saturating_sub(1),
                tensors.names()
            ),
        ));
    }
    Ok(layers)
}

/// A saved head: `head.json` and its weights, checked to agree with each
/// other (format, layout, layer sizes, class count).
pub fn read_head(dir: &Path) -> Result<(HeadMeta, Vec<DenseWeights>), ContractError> {
    let meta_path = dir.join(META_FILE);
    let meta: HeadMeta = crate::read(&meta_path)?;
    if meta.format != FORMAT || meta.weight_layout != WEIGHT_LAYOUT {
        return Err(ContractError::invalid(
            &meta_path,
            format!(
                "format {:?} / layout {:?}, this build reads {FORMAT:?} / {WEIGHT_LAYOUT:?}",
                meta.format, meta.weight_layout
            ),
        ));
    }
    let weights_path = dir.join(WEIGHTS_FILE);
    let layers = read_weights(&weights_path)?;
    let sizes: Vec<usize> =
        layers.first().map(|l| l.inputs).into_iter().chain(layers.iter().map(|l| l.outputs)).collect();
    if sizes != meta.layer_sizes {
        return Err(ContractError::invalid(
            &weights_path,
            format!("layer sizes {sizes:?} differ from head.json's {:?}", meta.layer_sizes),
        ));
    }
    if Some(&meta.class_names.len()) != sizes.last() {
        return Err(ContractError::invalid(
            &meta_path,
            format!("{} class names for {:?} outputs", meta.class_names.len(), sizes.last()),
        ));
    }
    Ok((meta, layers))
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.early_stopping.monitor, train_kit::Monitor::ValAccuracy);
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
