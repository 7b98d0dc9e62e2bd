//! A trained head: the model plus what a later stage needs to use it (class
//! names, layer sizes, config, history). `io` writes it as safetensors and
//! JSON.

use ndarray::{Array2, ArrayView2};
use std::collections::BTreeMap;

use train_kit::{argmax_rows, evaluate, EpochRecord, Evaluation};

use crate::config::HeadConfig;
use crate::model::Mlp;

use crate::loss::softmax_in_place;
use crate::train::{fit, logits_batches, logits_of, BatchSource, OnBatch, SourceError, TrainError};
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

    /// Metrics of the head on every row of `source`, read one batch at a
    /// time ([`logits_batches`]): the same bits whether `source` is in
    /// memory or streamed. Holds the logits (rows × classes), not the
    /// embeddings.
    pub fn evaluate_source(
        &self,
        source: &mut dyn BatchSource<f32>,
        top_k: &[usize],
    ) -> Result<Evaluation, SourceError> {
        let logits = logits_of(&self.model, source)?;
        Ok(evaluate(logits.view(), source.labels(), &self.meta.class_names, top_k))
    }

    /// Class probabilities for every row of `source`, in row order, one
    /// batch at a time: `each` gets the first row's index and the batch's
    /// probabilities (`[rows, classes]`).
    pub fn predict_proba_batches(
        &self,
        source: &mut dyn BatchSource<f32>,
        each: &mut OnBatch<f32>,
    ) -> Result<(), SourceError> {
        logits_batches(&self.model, source, &mut |first, logits| {
            let mut probs = logits.to_owned();
            softmax_in_place(probs.view_mut());
            each(first, probs.view())
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::{InMemory, EVAL_BATCH};
    use ndarray::{s, Array2};
    use train_kit::Xoshiro256;

    /// Scoring in batches: the last batch is short, rows stay in order, and
    /// a set of one batch gets exactly the whole-set forward pass's bits.
    #[test]
    fn batched_scoring_covers_every_row_in_order() {
        let n = 2 * EVAL_BATCH + 7;
        let mut rng = Xoshiro256::new(3);
        let x = Array2::from_shape_simple_fn((n, 6), || rng.normal() as f32);
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let config = HeadConfig { hidden: vec![5], epochs: 1, ..Default::default() };
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let head = train_head(&config, &names, &mut InMemory::new(x.view(), &labels), None, &mut |_| {}).unwrap();

        let mut probs = Array2::<f32>::zeros((n, 3));
        let mut firsts = Vec::new();
        head.predict_proba_batches(&mut InMemory::new(x.view(), &labels), &mut |first, batch| {
            firsts.push(first);
            probs.slice_mut(s![first..first + batch.nrows(), ..]).assign(&batch);
            Ok(())
        })
        .unwrap();
        assert_eq!(firsts, [0, EVAL_BATCH, 2 * EVAL_BATCH]);
        let first_batch = x.slice(s![..EVAL_BATCH, ..]);
        assert_eq!(probs.slice(s![..EVAL_BATCH, ..]), head.predict_proba(first_batch));
        let last = x.slice(s![2 * EVAL_BATCH.., ..]);
        assert_eq!(probs.slice(s![2 * EVAL_BATCH.., ..]), head.predict_proba(last));

        let small = x.slice(s![..40, ..]);
        let whole = head.evaluate(small, &labels[..40], &[1, 2]);
        let batched = head.evaluate_source(&mut InMemory::new(small, &labels[..40]), &[1, 2]).unwrap();
        assert_eq!(batched, whole);
    }
}
