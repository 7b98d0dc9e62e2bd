//! A trained head: the model plus what a later stage needs to use it (class
//! names, layer sizes, config, history). `io` writes it as safetensors and
//! JSON.

use ndarray::{Array2, ArrayView2};
use std::collections::BTreeMap;

use train_kit::{argmax_rows, evaluate, EpochRecord, Evaluation};

use crate::config::HeadConfig;
use crate::model::Mlp;

use crate::train::{fit, BatchSource, TrainError};
pub use contracts::head::{HeadMeta, FORMAT, WEIGHT_LAYOUT};

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
