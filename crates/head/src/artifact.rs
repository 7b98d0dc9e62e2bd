//! A trained head: the model plus what a later stage needs to use it (class
//! names, layer sizes, config, history). `io` writes it as safetensors and
//! JSON.

use std::collections::BTreeMap;

use ndarray::{Array2, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::config::{HeadConfig, Monitor};
use crate::metrics::{evaluate, Evaluation};
use crate::model::{argmax_rows, Activation, Mlp};
use crate::train::{fit, BatchSource, EpochRecord, TrainError};

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

/// A model with its metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainedHead {
    pub model: Mlp<f32>,
    pub meta: HeadMeta,
}

impl TrainedHead {
    /// Class probabilities for a batch of embeddings, `[rows, classes]`.
    pub fn predict_proba(&self, x: ArrayView2<f32>) -> Array2<f32> {
        self.model.predict_proba(x)
    }

    /// Predicted label per row (argmax, ties to the lower index).
    pub fn predict(&self, x: ArrayView2<f32>) -> Vec<usize> {
        argmax_rows(self.model.logits(x).view())
    }

    /// Metrics of the head on a labelled set.
    pub fn evaluate(&self, x: ArrayView2<f32>, labels: &[usize], top_k: &[usize]) -> Evaluation {
        evaluate(self.model.logits(x).view(), labels, &self.meta.class_names, top_k)
    }
}

/// Trains a head from `config` on f32 embeddings and packages it with its
/// metadata. `class_names` gives the label order.
pub fn train_head(
    config: &HeadConfig,
    class_names: &[String],
    train: &mut dyn BatchSource<f32>,
    validation: Option<&mut dyn BatchSource<f32>>,
    on_epoch: &mut dyn FnMut(&EpochRecord),
) -> Result<TrainedHead, TrainError> {
    let outcome = fit(config, class_names.len(), train, validation, on_epoch)?;
    let meta = HeadMeta {
        format: FORMAT.into(),
        class_names: class_names.to_vec(),
        layer_sizes: outcome.model.sizes(),
        activation: outcome.model.activation(),
        weight_layout: WEIGHT_LAYOUT.into(),
        config: config.clone(),
        config_fingerprint: config.fingerprint().to_string(),
        class_weights: outcome.class_weights,
        monitor: outcome.monitor,
        best_epoch: outcome.best_epoch,
        stopped_early: outcome.stopped_early,
        history: outcome.history,
        inputs: BTreeMap::new(),
    };
    Ok(TrainedHead { model: outcome.model, meta })
}
